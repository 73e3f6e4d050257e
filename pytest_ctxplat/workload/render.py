"""Chat rendering: a request plan as ``/v1/chat/completions`` messages.

A plan with a :class:`~pytest_ctxplat.workload.model.MessageLog` renders as the real
message structure of an agent: ``system``, ``user``, ``assistant`` messages with
``tool_calls`` and ``tool`` results. Tokens become words, one word per token, so the
server's tokenizer sees the planned number of tokens when it maps a word to one token.

A chat template adds tokens of its own to every message (a role marker, separators).
``overhead`` words are dropped from the start of each message so that the template's
tokens take their place: the rendered prompt keeps the planned length and the planned
block boundaries. :func:`probe_chat_tokenizer` measures that overhead with the server's
``/tokenize`` and reports drift (words that do not map to exactly one token).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson

from .model import RequestPlan
from .tokens import TokenSpace

__all__ = ["BlockText", "probe_chat_tokenizer", "render_messages", "words"]

_DIGITS = 7
_POW = 10 ** np.arange(_DIGITS - 1, -1, -1, dtype=np.int64)
_TABLE: list[npt.NDArray[np.uint8]] = [np.zeros((0, _DIGITS), np.uint8)]


def _digits(top: int) -> npt.NDArray[np.uint8]:
    """Decimal digits of 0 .. ``top`` (at least), one row each, grown on demand."""
    table = _TABLE[0]
    if top >= len(table):
        size = max(top + 1, 2 * len(table), 4096)
        ids = np.arange(size, dtype=np.int64)
        table = ((ids[:, None] // _POW[None, :]) % 10 + ord("0")).astype(np.uint8)
        _TABLE[0] = table
    return table


def words(tokens: npt.NDArray[np.int64]) -> str:
    """Token ids as text: a fixed-width word ``t0000123`` per token, joined by spaces.
    Built as one byte array (a 100k-token prompt in about a millisecond); the same id
    always gives the same word, so equal token prefixes render to equal text prefixes."""
    return word_bytes(tokens)[:-1].decode("ascii")


_WORD = _DIGITS + 2  # bytes per word with its separator: "t0000123 "
_WORDS: list[npt.NDArray[np.void]] = [np.zeros(0, np.dtype((np.void, _WORD)))]


def _word_table(top: int) -> npt.NDArray[np.void]:
    """``t0000123 `` for every id 0 .. ``top`` (at least), one 9-byte item each."""
    table = _WORDS[0]
    if top >= len(table):
        digits = _digits(top)
        rows = np.empty((len(digits), _WORD), np.uint8)
        rows[:, 0] = ord("t")
        rows[:, 1:-1] = digits
        rows[:, -1] = ord(" ")
        table = rows.view(np.dtype((np.void, _WORD))).ravel()
        _WORDS[0] = table
    return table


def word_bytes(tokens: npt.NDArray[np.int64]) -> bytes:
    """:func:`words` as ASCII bytes with a space after every word (the last one too):
    token ``i``'s word is bytes ``9 i`` to ``9 i + 8``."""
    return _word_view(tokens).tobytes()


def _word_view(tokens: npt.NDArray[np.int64], top: int | None = None) -> memoryview:
    """:func:`word_bytes` without copying them out of numpy; ``top``: the largest
    token id there may be, below ``10 ** 7`` (saves a pass)."""
    if not len(tokens):
        return memoryview(b"")
    if top is None or top >= 10 ** _DIGITS:
        tokens = np.asarray(tokens, np.int64) % (10 ** _DIGITS)
        top = int(tokens.max())
    words: Any = np.take(_word_table(top), tokens)
    return memoryview(words).cast("B")


class BlockText:
    """A prompt's text built from per-block pieces, rendered once per block and cached.

    ``style="json"``: a block's piece is its token ids as JSON array items (``1,2,3``);
    ``style="words"``: its :func:`words` (``t0000001 t0000002``). :meth:`text` joins the
    pieces of a request's blocks and its tail, byte for byte what rendering the whole
    token array gives (``orjson.dumps(tokens)`` without the brackets, or ``words``).

    Up to ``batch_tokens`` of blocks a request needs that are not cached are rendered
    together in one vectorised pass, with up to ``readahead_tokens`` of the block ids
    that follow the highest of them: fresh ids come from a counter, so the next
    requests' new blocks are usually among them and a small prompt costs no numpy pass
    of its own. A request longer than a batch whose first block is not cached is
    rendered whole in one pass (cutting it into pieces costs about as much again) and
    caches only its first block: a later request that shares it (the session's next
    turn, or another user's with the same prefix) renders its missing blocks into the
    cache, so a session that grows turn by turn finds its context cached from its third
    request on.
    A partial tail is cut from its block's full piece. The cache keeps at most
    ``budget_bytes`` of pieces: beyond that, the newest pieces up to half of it stay.
    """

    __slots__ = ("_ahead", "_batch", "_budget", "_cache", "_held", "_json", "_top",
                 "block_size", "space")

    def __init__(self, space: TokenSpace, style: Literal["json", "words"], *,
                 budget_bytes: int = 32 << 20, readahead_tokens: int = 2048,
                 batch_tokens: int = 4096) -> None:
        self.space = space
        self.block_size = space.block_size
        self._json = style == "json"
        self._cache: dict[int, bytes] = {}
        self._held = 0
        self._budget = budget_bytes
        self._ahead = max(0, readahead_tokens // space.block_size)
        self._batch = max(1, batch_tokens // space.block_size)
        self._top = space.token_min + space.span - 1

    def text(self, block_ids: npt.NDArray[np.int64], tail_id: int = 0, tail_len: int = 0
             ) -> bytes | memoryview:
        """The text of ``block_ids`` (full blocks) and the first ``tail_len`` tokens of
        block ``tail_id``."""
        cache = self._cache
        blocks: list[int] = block_ids.tolist()
        try:
            parts = list(map(cache.__getitem__, blocks))
            tail = cache[tail_id] if tail_len else b""
        except KeyError:
            if len(blocks) + bool(tail_len) > self._batch and blocks[0] not in cache:
                return self._whole(block_ids, tail_id, tail_len)  # (no scan of the rest)
            found = list(map(cache.get, blocks))
            maybe = cache.get(tail_id) if tail_len else b""
            missing = [b for b, p in zip(blocks, found, strict=True) if p is None]
            if maybe is None:
                missing.append(tail_id)
            fresh = self._render(missing)
            parts = [p if p is not None else fresh[b]
                     for b, p in zip(blocks, found, strict=True)]
            tail = maybe if maybe is not None else fresh[tail_id]
        if tail_len:
            if self._json:
                parts.append(b",".join(tail.split(b",", tail_len)[:tail_len]))
            else:
                parts.append(tail[: _WORD * tail_len - 1])
        return (b"," if self._json else b" ").join(parts)

    def _whole(self, block_ids: npt.NDArray[np.int64], tail_id: int, tail_len: int
               ) -> bytes | memoryview:
        """The text in one pass; caches the first block's piece."""
        tokens = self.space.tokens(block_ids, tail_id, tail_len)
        bs = self.block_size
        text: bytes | memoryview
        if self._json:
            raw = orjson.dumps(tokens, option=orjson.OPT_SERIALIZE_NUMPY)
            end = 0
            for _ in range(bs):
                end = raw.find(b",", end + 1)
            first = raw[1:end] if end >= 0 else raw[1:-1]
            text = memoryview(raw)[1:-1]
        else:
            text = _word_view(tokens, self._top)[:-1]
            first = text[: _WORD * bs - 1].tobytes()
        if len(block_ids):
            self._cache[int(block_ids[0])] = first
            self._held += len(first)
        return text

    def _render(self, missing: list[int]) -> dict[int, bytes]:
        """Render ``missing`` and the read-ahead ids after them; cache them all."""
        cache = self._cache
        top = max(missing)
        ids = sorted(set(missing))
        ids += [b for b in range(top + 1, top + 1 + self._ahead) if b not in cache]
        bs = self.block_size
        tokens = self.space.tokens(np.asarray(ids, np.int64))
        if self._json:
            rows = orjson.dumps(tokens.reshape(len(ids), bs), option=orjson.OPT_SERIALIZE_NUMPY)
            pieces = rows[2:-2].split(b"],[")
        else:
            raw = _word_view(tokens, self._top).tobytes()
            step = _WORD * bs
            pieces = [raw[i : i + step - 1] for i in range(0, len(raw), step)]
        fresh = dict(zip(ids, pieces, strict=True))
        cache.update(fresh)
        self._held += sum(map(len, pieces))
        if self._held > self._budget:  # keep the newest pieces, up to half the budget
            keep: list[tuple[int, bytes]] = []
            held = 0
            for item in reversed(cache.items()):
                held += len(item[1])
                if held > self._budget // 2:
                    break
                keep.append(item)
            cache.clear()
            cache.update(reversed(keep))
            self._held = sum(len(p) for _, p in keep)
        return fresh


def render_messages(plan: RequestPlan, tokens: npt.NDArray[np.int64],
                    overhead: int = 0) -> list[dict[str, Any]]:
    """The messages of ``plan`` (one ``user`` message when it has no structure)."""
    n = len(tokens)
    if plan.messages is None or plan.n_messages == 0:
        return [{"role": "user", "content": words(tokens[overhead:] if n > overhead else tokens)}]
    out: list[dict[str, Any]] = []
    for role, start, end, calls in message_spans(plan, n, overhead):
        text = words(tokens[start:end])
        if role == "tool_call":
            out.append({"role": "assistant", "content": text, "tool_calls": [
                {"id": f"call_{calls}", "type": "function",
                 "function": {"name": "run", "arguments": "{}"}}]})
        elif role == "tool":
            out.append({"role": "tool", "tool_call_id": f"call_{calls}", "content": text})
        else:
            out.append({"role": role, "content": text})
    return out


def message_spans(plan: RequestPlan, n: int,
                  overhead: int = 0) -> Iterator[tuple[str, int, int, int]]:
    """The messages of a structured ``plan`` over its first ``n`` tokens, as ``(role,
    start, end, calls)``: the token range of each message's text (its first ``overhead``
    tokens are the chat template's, so they are skipped; a message may shrink to
    nothing but them) and the number of tool calls so far (a ``tool`` message answers
    call number ``calls``). Content after the last boundary is a ``user`` message."""
    log = plan.messages
    assert log is not None
    ends = log.ends[: plan.n_messages]
    roles = log.roles[: plan.n_messages]
    if ends[-1] < n:
        ends = [*ends, n]
        roles = [*roles, "user"]
    start = calls = 0
    for role, end in zip(roles, ends, strict=True):
        end = min(end, n)
        if end <= start:
            continue
        skip = min(overhead, end - start)
        if role == "tool_call":
            calls += 1
        yield role, start + skip, end, calls
        start = end


async def probe_chat_tokenizer(client: Any, url: str, model: str) -> tuple[int, dict[str, str]]:
    """Ask the server's ``/tokenize`` how it counts rendered chats.

    Returns the template tokens per message (to pass as ``overhead``) and notes: a
    ``chat.tokenize`` note says what was found, including drift when a word is not one
    token (a real BPE tokenizer): then block boundaries move and the designed hit rate
    is only approximate for chat requests.
    """
    sample = np.arange(100, 164, dtype=np.int64)

    async def count(messages: list[dict[str, Any]]) -> int | None:
        try:
            resp = await client.post(url + "/tokenize", json={
                "model": model, "messages": messages, "add_generation_prompt": False},
                timeout=10.0)
            if resp.status_code >= 400:
                return None
            return int(resp.json()["count"])
        except Exception:  # any failure means: no usable /tokenize
            return None

    one = await count([{"role": "user", "content": words(sample[:32])}])
    two = await count([{"role": "user", "content": words(sample[:32])},
                       {"role": "assistant", "content": words(sample)}])
    if one is None or two is None:
        return 0, {"chat.tokenize": "server has no /tokenize for messages: chat block "
                                    "boundaries unchecked"}
    probe_words = await count([{"role": "user", "content": words(sample)}])
    per_word = ((probe_words or one) - one) / (len(sample) - 32)
    overhead = max(0, two - one - round(len(sample) * per_word))
    if abs(per_word - 1.0) > 1e-9:
        return overhead, {"chat.tokenize": (
            f"drift: one word is {per_word:.2f} tokens under the server's tokenizer, so "
            "chat prompts are longer than planned and block boundaries move; designed hit "
            "rates are approximate (use api: completions for exact prompts)")}
    return overhead, {"chat.tokenize": f"ok: one token per word, {overhead} template "
                                       "tokens per message (absorbed)"}
