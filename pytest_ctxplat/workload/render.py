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

from typing import Any

import numpy as np
import numpy.typing as npt

from .model import RequestPlan

__all__ = ["probe_chat_tokenizer", "render_messages", "words"]

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
    n = len(tokens)
    if not n:
        return ""
    buf = np.empty((n, _DIGITS + 2), np.uint8)
    buf[:, 0] = ord("t")
    buf[:, -1] = ord(" ")
    ids = np.asarray(tokens, np.int64) % (10 ** _DIGITS)
    buf[:, 1:-1] = _digits(int(ids.max()))[ids]
    return buf.tobytes()[:-1].decode("ascii")


def render_messages(plan: RequestPlan, tokens: npt.NDArray[np.int64],
                    overhead: int = 0) -> list[dict[str, Any]]:
    """The messages of ``plan`` (one ``user`` message when it has no structure)."""
    log = plan.messages
    n = len(tokens)
    if log is None or plan.n_messages == 0:
        return [{"role": "user", "content": words(tokens[overhead:] if n > overhead else tokens)}]
    out: list[dict[str, Any]] = []
    start = 0
    calls = 0
    ends = log.ends[: plan.n_messages]
    roles = log.roles[: plan.n_messages]
    if ends[-1] < n:  # content after the last message boundary: a user message
        ends = [*ends, n]
        roles = [*roles, "user"]
    for role, end in zip(roles, ends, strict=True):
        end = min(end, n)
        if end <= start:
            continue
        skip = min(overhead, end - start)  # a message may shrink to its template tokens
        text = words(tokens[start + skip: end])
        start = end
        if role == "tool_call":
            calls += 1
            out.append({"role": "assistant", "content": text, "tool_calls": [
                {"id": f"call_{calls}", "type": "function",
                 "function": {"name": "run", "arguments": "{}"}}]})
        elif role == "tool":
            out.append({"role": "tool", "tool_call_id": f"call_{calls}", "content": text})
        else:
            out.append({"role": role, "content": text})
    return out


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
