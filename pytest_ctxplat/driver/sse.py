"""Server-sent events: an incremental ``data:`` event splitter and the reading of one
OpenAI streaming payload.

:class:`SSEDecoder` turns the byte buffers a socket delivers (split anywhere, down to one
byte at a time) into the payloads of complete events. :func:`interpret_payload` reads one
payload of an OpenAI-compatible ``/v1/completions`` or ``/v1/chat/completions`` stream.

Both sit on the driver's hot path, so they avoid work per byte and per token: the decoder
splits whole buffers with ``bytes.split`` and the interpreter returns shared constants
for the common cases (a token chunk, a chunk without a token, ``[DONE]``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

__all__ = [
    "DONE_EVENT",
    "EMPTY_EVENT",
    "TOKEN_EVENT",
    "SSEDecoder",
    "StreamEvent",
    "StreamUsage",
    "TokenTemplate",
    "interpret_payload",
    "split_region",
]


class SSEDecoder:
    """Incremental splitter of a ``text/event-stream`` body into ``data`` payloads.

    :meth:`feed` takes the bytes received so far (any split) and returns the payloads of
    the events completed by them, in order. A payload is the value of the event's ``data``
    field: the bytes after ``data:`` with one optional leading space removed; several
    ``data`` lines of one event are joined with ``\\n``. Events end with a blank line;
    lines end with ``\\n``, ``\\r\\n`` or ``\\r``. Comment lines (``:...``) and the other
    fields (``event``, ``id``, ``retry``, unknown ones) are ignored; an event without a
    ``data`` field yields nothing. :meth:`flush` returns the last event when the body
    ended without a blank line after it.
    """

    __slots__ = ("_buf", "_skip_lf")

    def __init__(self) -> None:
        self._buf = b""
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add received bytes; return the payloads of the events they complete."""
        done = self.feed_region(chunk)
        return split_region(done) if done else []

    def feed_region(self, chunk: bytes) -> bytes:
        """Add received bytes; return the events they complete as one region of bytes.

        The region holds whole events with LF line ends, separated by one blank line
        (``\\n\\n``), without the blank line after the last one; ``b""`` when no event
        was completed. :func:`split_region` turns it into payloads;
        :meth:`TokenTemplate.count_tokens` counts its token chunks without splitting.
        """
        if self._skip_lf and chunk:
            # The previous buffer ended with CR: a LF first here is the rest of a CRLF.
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            # Rare: CR or CRLF line ends; normalise them to LF.
            if buf[-1:] == b"\r":
                self._skip_lf = True
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return b""
        self._buf = buf[end + 2 :]
        return buf[:end]

    def flush(self) -> list[bytes]:
        """End of body: return the payload of a last event left without a blank line."""
        buf = self._buf
        self._buf = b""
        self._skip_lf = False
        out: list[bytes] = []
        for part in buf.split(b"\n\n"):
            if part:
                payload = _parse_event(part)
                if payload is not None:
                    out.append(payload)
        return out

    @property
    def pending(self) -> int:
        """Bytes held back, waiting for the end of their event."""
        return len(self._buf)


def split_region(done: bytes) -> list[bytes]:
    """The payloads of a region returned by :meth:`SSEDecoder.feed_region`, in order."""
    # Fast path, the usual body: every event a single ``data: `` line. If all the
    # LFs are in the separators before ``data: ``, the events split cleanly on them.
    if done[:6] == b"data: " and done.count(b"\n") == 2 * done.count(b"\n\ndata: "):
        return done[6:].split(b"\n\ndata: ")
    out: list[bytes] = []
    for part in done.split(b"\n\n"):
        if part[:5] == b"data:" and b"\n" not in part:
            out.append(part[6:] if part[5:6] == b" " else part[5:])
        elif part:
            payload = _parse_event(part)
            if payload is not None:
                out.append(payload)
    return out


def _parse_event(block: bytes) -> bytes | None:
    """The ``data`` value of one event (LF-separated lines), or ``None`` if it has none."""
    data: bytes | None = None
    for line in block.split(b"\n"):
        if line[:4] != b"data":
            continue
        sep = line[4:5]
        if sep == b":":
            value = line[6:] if line[5:6] == b" " else line[5:]
        elif not sep:
            value = b""  # a bare "data" line: the field with an empty value
        else:
            continue  # another field whose name starts with "data"
        data = value if data is None else data + b"\n" + value
    return data


class StreamUsage(NamedTuple):
    """The ``usage`` object of a stream chunk; ``None`` where a figure is absent.
    ``model_ms`` is the server's own model-time ``(TTFT, end)`` in milliseconds (the
    simulator's ``ctxplat_model_ttft_ms`` / ``ctxplat_model_e2e_ms``), else None."""

    completion_tokens: int | None
    prompt_tokens: int | None
    cached_tokens: int | None
    model_ms: tuple[float | None, float | None] | None = None


class StreamEvent(NamedTuple):
    """What one payload of an OpenAI stream says.

    ``has_token``: the chunk carries generated output (see :func:`interpret_payload`).
    ``done``: the payload was ``[DONE]``. ``error``: the payload was an error object or
    not readable; the stream should be treated as failed.
    """

    has_token: bool = False
    done: bool = False
    finish_reason: str | None = None
    usage: StreamUsage | None = None
    error: str | None = None


DONE_EVENT = StreamEvent(done=True)
TOKEN_EVENT = StreamEvent(has_token=True)
EMPTY_EVENT = StreamEvent()

_MISSING = object()
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _read_usage(usage: dict[str, Any]) -> StreamUsage:
    details = usage.get("prompt_tokens_details")
    cached = _int_or_none(details.get("cached_tokens")) if isinstance(details, dict) else None
    return StreamUsage(
        _int_or_none(usage.get("completion_tokens")),
        _int_or_none(usage.get("prompt_tokens")),
        cached,
        _model_ms(usage) if _MODEL_TTFT in usage else None,
    )


_MODEL_TTFT = "ctxplat_model_ttft_ms"
_MODEL_E2E = "ctxplat_model_e2e_ms"


def _number_or_none(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _model_ms(usage: dict[str, Any]) -> tuple[float | None, float | None]:
    """The server's model-time TTFT and end in ms (only a simulator reports them)."""
    return _number_or_none(usage.get(_MODEL_TTFT)), _number_or_none(usage.get(_MODEL_E2E))


def _error_text(err: object) -> str:
    if isinstance(err, dict):
        message = err.get("message")
        kind = err.get("type") or err.get("code")
        text = str(message) if message is not None else orjson.dumps(err).decode()
        return f"{kind}: {text}" if kind else text
    return str(err)


def _short(payload: bytes, limit: int = 200) -> str:
    return payload[:limit].decode("utf-8", "replace")


def interpret_payload(payload: bytes) -> StreamEvent:
    """Read one ``data`` payload of an OpenAI-compatible stream.

    ``[DONE]`` gives :data:`DONE_EVENT`. Otherwise the payload is parsed as JSON and a
    chunk *carries a token* when one of its ``choices``

    - has a ``text`` key (``/v1/completions``), or
    - has a ``delta`` whose ``content``, ``reasoning_content`` or ``reasoning`` is not
      null, or whose ``tool_calls`` is non-empty (``/v1/chat/completions``).

    Empty strings count (a token may decode to no text yet) except in the chat
    role chunk (a ``delta`` with ``role``) and in a chunk that only closes the choice
    (``finish_reason`` set and no text). ``usage`` is read whatever else the chunk
    holds, including ``choices``. An ``{"error": ...}`` object, an ``"object": "error"``
    chunk or a payload that is not a JSON object gives an event with ``error`` set.
    Empty payloads give :data:`EMPTY_EVENT`.
    """
    if payload == b"[DONE]":
        return DONE_EVENT
    if not payload:
        return EMPTY_EVENT
    try:
        obj = _loads(payload)
    except _JSONDecodeError:
        return StreamEvent(error=f"invalid JSON in stream: {_short(payload)!r}")
    if type(obj) is not dict:
        return StreamEvent(error=f"unexpected stream payload: {_short(payload)!r}")
    has_token = False
    finish: str | None = None
    choices = obj.get("choices")
    if choices and type(choices) is list:
        for choice in choices:
            if type(choice) is not dict:
                continue
            fr = choice.get("finish_reason")
            if fr is not None:
                finish = str(fr)
            text = choice.get("text", _MISSING)
            if text is not _MISSING:
                if text or fr is None:
                    has_token = True
                continue
            delta = choice.get("delta")
            if type(delta) is not dict:
                continue
            content = delta.get("content")
            if content is None:
                content = delta.get("reasoning_content")
                if content is None:
                    content = delta.get("reasoning")
            if content is not None:
                if content or ("role" not in delta and fr is None):
                    has_token = True
            elif delta.get("tool_calls"):
                has_token = True
        usage = obj.get("usage")
        if usage is None:  # the usual token chunk
            if finish is None:
                return TOKEN_EVENT if has_token else EMPTY_EVENT
            return StreamEvent(has_token=has_token, finish_reason=finish)
    else:
        err = obj.get("error")
        if err is not None or obj.get("object") == "error":
            return StreamEvent(error=_error_text(err if err is not None else obj))
        usage = obj.get("usage")
    if type(usage) is not dict:
        if not has_token and finish is None:
            return EMPTY_EVENT
        return StreamEvent(has_token=has_token, finish_reason=finish)
    return StreamEvent(has_token=has_token, finish_reason=finish, usage=_read_usage(usage))


_TEXT_KEYS = (b'"text":"', b'"content":"')


class TokenTemplate:
    """Recognises a stream's plain token chunks by their bytes, without parsing JSON.

    A server serialises every token chunk of one stream the same way; only the token
    text changes. :meth:`learn` takes a payload that :func:`interpret_payload` read as a
    plain token chunk (:data:`TOKEN_EVENT`: no usage, no finish reason, no error) and
    keeps the bytes before its text (up to ``"text":"`` or ``"content":"``) and after it.
    A payload is then a token chunk of the same shape when it is that prefix, a text
    without an unescaped quote or a line break, and that suffix: the JSON structure is
    the template's, so its meaning is too. Anything else (the finish chunk, usage,
    ``[DONE]``, errors, a chunk whose ``id`` or ``created`` changes) does not match and
    is parsed in full. A template is not learnt from a chat chunk with ``role`` (there an
    empty text is not a token) nor from a payload where the text key is not unique.
    """

    __slots__ = ("_joint", "_prefix", "_quotes", "_region_prefix", "_suffix")

    def __init__(self) -> None:
        self._prefix = b""
        self._suffix = b""
        self._region_prefix = b""
        self._joint = b""
        self._quotes = 0

    @property
    def learnt(self) -> bool:
        return bool(self._prefix)

    def learn(self, payload: bytes) -> bool:
        """Take ``payload`` (a :data:`TOKEN_EVENT` payload) as the template; True if usable."""
        if b'"role":' in payload or b"\n" in payload:
            return False
        start = -1
        for key in _TEXT_KEYS:
            n = payload.count(key)
            if n > 1 or (n == 1 and start >= 0):
                return False
            if n == 1:
                start = payload.index(key) + len(key)
        if start < 0:
            return False
        end = start
        while True:  # the closing quote: one not escaped by an odd run of backslashes
            end = payload.find(b'"', end)
            if end < 0:
                return False
            run = 0
            while payload[end - 1 - run] == 0x5C:  # backslash
                run += 1
            if run % 2 == 0:
                break
            end += 1
        prefix, suffix = payload[:start], payload[end:]
        quotes = _quotes(prefix) + _quotes(suffix)
        if _quotes(payload) != quotes:
            return False  # an escaped quote in the text: keep the template simple
        self._prefix, self._suffix, self._quotes = prefix, suffix, quotes
        self._region_prefix = b"data: " + prefix
        self._joint = suffix + b"\n\ndata: " + prefix
        return True

    def matches(self, payload: bytes) -> bool:
        """Whether ``payload`` is a token chunk of the template's shape."""
        prefix = self._prefix
        return (
            bool(prefix)
            and payload.startswith(prefix)
            and payload.endswith(self._suffix)
            and len(payload) >= len(prefix) + len(self._suffix)
            and b"\n" not in payload
            and _quotes(payload) == self._quotes
        )

    def scan(self, region: bytes, start: int = 0) -> tuple[int, int]:
        """Count the token chunks of the template's shape at ``start`` in ``region``
        (from :meth:`SSEDecoder.feed_region`; ``start`` at the beginning of an event)
        without splitting it.

        Returns ``(k, rest)``: the ``k`` events from ``start`` are such token chunks and
        the events from offset ``rest`` on (the finish chunk, ``usage``, ``[DONE]``, ...)
        are to be read one by one; ``(0, start)`` when the region does not have that form.

        The last events that do not look like a token chunk (the finish chunk, usage,
        ``[DONE]``) are set aside walking back from the end. The events before them match
        when each of the ``k - 1`` separators sits between a suffix and a prefix (then
        every event is prefix, text, suffix), there are no other line breaks, and the
        quotes are exactly the template's (no text holds a quote, so none adds a field).
        """
        prefix, suffix = self._region_prefix, self._suffix
        if not self._prefix or not region.startswith(prefix, start):
            return 0, start
        cut = len(region)
        for _ in range(_MAX_TRAILING):
            sep = region.rfind(b"\n\n", start, cut)
            first = sep + 2 if sep >= 0 else start
            if region.startswith(prefix, first, cut) and region.endswith(suffix, first, cut):
                break
            if sep < 0:
                return 0, start
            cut = sep
        else:
            return 0, start
        # Two passes in C: the joints, and the quotes and line breaks together (deleting
        # them is one pass; numpy's vectorised counts did not pay off in the running
        # client, where its code is out of the CPU caches).
        joints = region.count(self._joint, start, cut)
        events = region[start:cut] if start or cut < len(region) else region
        marks = len(events) - len(events.translate(None, b'"\n'))
        if marks != 2 * joints + (joints + 1) * self._quotes:
            return 0, start  # an event of another shape, or a quote or line break in a text
        return joints + 1, cut + 2


_MAX_TRAILING = 8  # events after the last token chunk of a region: finish, usage, [DONE]


def _quotes(data: bytes) -> int:
    return data.count(b'"')


