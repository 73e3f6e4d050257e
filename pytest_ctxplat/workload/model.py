"""The request model shared by synthetic workloads and trace replay.

A workload produces, per user, a stream of :class:`SessionPlan` objects. A session is a
sequence of steps: a :class:`RequestPlan` (send one request after a delay) or, for
agent swarms, other step kinds added by later workload kinds. Every request's input is a
list of full block ids (prefix-chained: the same id always has the same content *and*
the same prefix) plus a partial tail taken from the next block id. That makes the
designed hit rate computable before anything is sent (:class:`DesignedCache`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["BlockIdAllocator", "DesignedCache", "RequestPlan", "SessionPlan", "SessionStream"]


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """One request: ``blocks`` full blocks, then ``tail_len`` tokens of block ``tail_id``.

    ``delay_s`` is the wait between the end of the session's previous step and sending
    this request (tool latency or human think time).
    """

    blocks: npt.NDArray[np.int64]
    tail_id: int
    tail_len: int
    block_size: int
    output_tokens: int
    delay_s: float = 0.0
    kind: str = "turn"

    @property
    def prompt_tokens(self) -> int:
        return len(self.blocks) * self.block_size + self.tail_len


@dataclass(slots=True)
class SessionPlan:
    """One conversation (a user's session, or a subagent's own context)."""

    session_id: str
    steps: Iterator[RequestPlan]


class BlockIdAllocator:
    """Hands out fresh block ids; ids never repeat within a run."""

    __slots__ = ("_next",)

    def __init__(self, start: int = 1) -> None:
        self._next = start

    def take(self, n: int) -> npt.NDArray[np.int64]:
        ids = np.arange(self._next, self._next + n, dtype=np.int64)
        self._next += n
        return ids


@dataclass(slots=True)
class SessionStream:
    """A growing context: shared prefix ids, then ids unique to this session.

    ``extend(tokens)`` appends tokens (allocating block ids as blocks start), and
    ``request(...)`` snapshots the current context as a :class:`RequestPlan`. Shared
    prefixes are whole blocks; everything after them is the session's own content.
    """

    block_size: int
    ids: BlockIdAllocator
    _blocks: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    _n: int = 0  # ids in use (full blocks plus the open partial block)
    tokens: int = 0

    @classmethod
    def start(
        cls, block_size: int, ids: BlockIdAllocator, shared: npt.NDArray[np.int64]
    ) -> SessionStream:
        s = cls(block_size=block_size, ids=ids)
        s._blocks = np.array(shared, dtype=np.int64, copy=True)
        s._n = len(shared)
        s.tokens = len(shared) * block_size
        return s

    def extend(self, tokens: int) -> None:
        if tokens < 0:
            raise ValueError("tokens must be >= 0")
        self.tokens += tokens
        need = -(-self.tokens // self.block_size)
        if need > self._n:
            if need > len(self._blocks):
                grown = np.zeros(max(need, 2 * len(self._blocks), 16), np.int64)
                grown[: self._n] = self._blocks[: self._n]
                self._blocks = grown
            self._blocks[self._n : need] = self.ids.take(need - self._n)
            self._n = need

    def request(self, output_tokens: int, delay_s: float = 0.0, kind: str = "turn") -> RequestPlan:
        full, tail = divmod(self.tokens, self.block_size)
        # A view, not a copy: earlier prefixes never change once written.
        blocks = self._blocks[:full]
        tail_id = int(self._blocks[full]) if tail else 0
        return RequestPlan(blocks, tail_id, tail, self.block_size, output_tokens, delay_s, kind)


class DesignedCache:
    """What an infinite prefix cache would serve, in send order, at token granularity.

    Block ids are prefix-chained, so the leading blocks already seen form a prefix and
    a binary search finds them. Beyond full blocks, a partial tail seen earlier extends
    the shared prefix by its length. The result is floored to ``server_block_size``
    (a cache can only serve whole blocks of its own size) and capped at
    ``prompt_tokens - 1`` rounded down to a block, as vLLM always computes the last token.
    """

    __slots__ = ("_partial", "_seen", "server_block_size")

    def __init__(self, server_block_size: int = 1) -> None:
        self._seen: set[int] = set()
        self._partial: dict[int, int] = {}
        self.server_block_size = server_block_size

    def observe(self, plan: RequestPlan) -> int:
        """Record ``plan`` as sent; return its designed cached tokens."""
        blocks = plan.blocks
        seen = self._seen
        n = len(blocks)
        hits = bisect.bisect_left(range(n), True, key=lambda i: int(blocks[i]) not in seen)
        tokens = hits * plan.block_size
        if hits < n:
            tokens += min(self._partial.get(int(blocks[hits]), 0), plan.block_size)
        elif plan.tail_len:
            if plan.tail_id in seen:
                tokens += plan.tail_len
            else:
                tokens += min(self._partial.get(plan.tail_id, 0), plan.tail_len)
        seen.update(blocks[hits:].tolist())
        if plan.tail_len and plan.tail_len > self._partial.get(plan.tail_id, 0):
            self._partial[plan.tail_id] = plan.tail_len
        sbs = self.server_block_size
        cap = ((plan.prompt_tokens - 1) // sbs) * sbs
        return max(0, min((tokens // sbs) * sbs, cap))
