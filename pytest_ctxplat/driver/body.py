"""Request bodies from request plans, built by joining cached bytes.

A body is ``orjson.dumps`` of the payload the runner defines (:meth:`Runner.render_body
<pytest_ctxplat.driver.runner.Runner.render_body>`: model, ``max_tokens``, streaming
options, then ``prompt`` or ``messages``, then the run's ``extra_body``).
:class:`BodyBuilder` produces the same bytes without building the payload: the parts
around the prompt are rendered once per ``max_tokens`` (a placeholder marks where the
prompt goes), and the prompt's text comes from a
:class:`~pytest_ctxplat.workload.render.BlockText` cache of per-block pieces, so a
request costs a few dictionary look-ups and one join instead of token synthesis and a
JSON encoding of the whole prompt. Chat messages are cut from the prompt's words by
token position (every word is 9 bytes with its space) and wrapped in their fixed JSON
(words never need escaping).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ..workload.model import RequestPlan
from ..workload.render import BlockText, message_spans
from ..workload.tokens import TokenSpace

__all__ = ["BodyBuilder"]

_MARK = "\x00ctxplat-prompt\x00"
_W = 9  # bytes per rendered word with its separator


class BodyBuilder:
    """Renders request bodies for one run (see the module docstring).

    ``payload(max_tokens, prompt)`` gives the payload of a request with ``max_tokens``
    and ``prompt`` (the ``prompt`` ids or chat ``messages``). Where ``extra_body``
    replaced the prompt, the body is the same for every request with that
    ``max_tokens``; where it holds the placeholder itself, ``plain(plan)`` renders.
    """

    __slots__ = ("_blocks", "_chat", "_frames", "_overhead", "_payload", "_plain")

    def __init__(self, space: TokenSpace, *, chat: bool, overhead: int,
                 payload: Callable[[int, Any], dict[str, Any]],
                 plain: Callable[[RequestPlan], bytes]) -> None:
        self._chat = chat
        self._overhead = overhead
        self._payload = payload
        self._plain = plain
        self._blocks = BlockText(space, "words" if chat else "json")
        self._frames: dict[int, tuple[bytes, bytes] | bytes | None] = {}

    def body(self, plan: RequestPlan) -> bytes:
        """The body of ``plan``: byte for byte what the plain construction gives."""
        try:
            frame = self._frames[plan.output_tokens]
        except KeyError:
            frame = self._frames[plan.output_tokens] = self._frame(plan.output_tokens)
        if type(frame) is not tuple:
            return self._plain(plan) if frame is None else frame  # type: ignore[return-value]
        head, tail = frame
        text = self._blocks.text(plan.blocks, plan.tail_id, plan.tail_len)
        if self._chat:
            parts = _messages(plan, text, self._overhead)
            parts[0] = head + b"[" + parts[0]
            parts.append(b"]" + tail)
            return b"".join(parts)
        return b"".join((head, b"[", text, b"]", tail))

    def _frame(self, max_tokens: int) -> tuple[bytes, bytes] | bytes | None:
        """The body around the prompt, split where it goes; the whole body when
        ``extra_body`` replaced the prompt; None when the split is ambiguous."""
        whole = orjson.dumps(self._payload(max_tokens, _MARK),
                             option=orjson.OPT_SERIALIZE_NUMPY)
        mark = orjson.dumps(_MARK)
        found = whole.count(mark)
        if found != 1:
            return whole if found == 0 else None
        head, tail = whole.split(mark)
        return head, tail


def _messages(plan: RequestPlan, text: bytes | memoryview, overhead: int
              ) -> list[bytes | memoryview]:
    """The JSON of the chat messages of ``plan`` (see ``render_messages``) in pieces to
    join, separators included; the contents are views of ``text``, the words of the
    whole prompt, so they are copied once, by the join."""
    n = (len(text) + 1) // _W
    view = memoryview(text)
    if plan.messages is None or plan.n_messages == 0:
        return [_ROLE_HEADS["user"], view[_W * overhead:] if n > overhead else view, b'"}']
    out: list[bytes | memoryview] = []
    sep = b""
    for role, start, end, calls in message_spans(plan, n, overhead):
        content = view[_W * start: _W * end - 1]
        if role == "tool_call":
            out += (sep + b'{"role":"assistant","content":"', content,
                    b'","tool_calls":[{"id":"call_%d","type":"function","function":'
                    b'{"name":"run","arguments":"{}"}}]}' % calls)
        elif role == "tool":
            out += (sep + b'{"role":"tool","tool_call_id":"call_%d","content":"' % calls,
                    content, b'"}')
        else:
            out += (sep + (_ROLE_HEADS.get(role) or _role_head(role)), content, b'"}')
        sep = b","
    return out or [b""]


def _role_head(role: str) -> bytes:
    return b'{"role":' + orjson.dumps(role) + b',"content":"'


_ROLE_HEADS: Mapping[str, bytes] = {r: _role_head(r) for r in ("system", "user", "assistant")}
