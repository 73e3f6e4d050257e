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
    "interpret_payload",
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
            return []
        self._buf = buf[end + 2 :]
        done = buf[:end]
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
    """The ``usage`` object of a stream chunk; ``None`` where a figure is absent."""

    completion_tokens: int | None
    prompt_tokens: int | None
    cached_tokens: int | None


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
    )


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
