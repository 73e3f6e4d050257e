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
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = [
    "BlockIdAllocator",
    "DesignedCache",
    "MessageLog",
    "RequestPlan",
    "SessionPlan",
    "SessionStream",
    "SpawnStep",
    "Step",
    "TimedRequest",
]


class MessageLog:
    """The chat structure of a growing context: one ``(role, end token)`` per message,
    append-only, so a request snapshots it by count. Roles: ``system``, ``user``,
    ``assistant`` (a final answer), ``tool_call`` (an assistant message calling a tool)
    and ``tool`` (its result)."""

    __slots__ = ("ends", "roles")

    def __init__(self) -> None:
        self.roles: list[str] = []
        self.ends: list[int] = []

    def add(self, role: str, end: int) -> None:
        if self.ends and end <= self.ends[-1]:
            if end == self.ends[-1]:
                return
            raise ValueError("message ends must increase")
        self.roles.append(role)
        self.ends.append(end)


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
    messages: MessageLog | None = None
    n_messages: int = 0

    @property
    def prompt_tokens(self) -> int:
        return len(self.blocks) * self.block_size + self.tail_len


@dataclass(slots=True)
class SessionPlan:
    """One conversation (a user's session, or a subagent's own context)."""

    session_id: str
    steps: Iterator[Step]


@dataclass(frozen=True, slots=True)
class SpawnStep:
    """Start ``children`` (subagents, each with its own context) concurrently after
    ``delay_s``; with ``wait`` the parent's next step waits until all of them finished."""

    children: tuple[SessionPlan, ...]
    delay_s: float = 0.0
    wait: bool = True


Step = RequestPlan | SpawnStep


@dataclass(frozen=True, slots=True)
class TimedRequest:
    """A request sent at a fixed time ``t_s`` after the run starts (open loop), as trace
    replay with original timestamps does. ``index`` counts within ``session_id``.
    ``wait_for`` (>= 0) is the position, in the same schedule, of a request that must
    finish first: an agent never sends before it has the answer it builds on."""

    t_s: float
    user: int
    session_id: str
    index: int
    plan: RequestPlan
    wait_for: int = -1


class BlockIdAllocator:
    """Hands out fresh block ids; ids never repeat within a run."""

    __slots__ = ("_next",)

    def __init__(self, start: int = 1) -> None:
        self._next = start

    def reserve(self, n: int) -> int:
        """Reserve ``n`` consecutive ids; return the first."""
        start = self._next
        self._next += n
        return start

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
    log: MessageLog | None = None

    @classmethod
    def start(
        cls, block_size: int, ids: BlockIdAllocator, shared: npt.NDArray[np.int64]
    ) -> SessionStream:
        n = len(shared)
        blocks = np.zeros(max(16, 2 * n), np.int64)  # room to grow: one array per session
        blocks[:n] = shared
        return cls(block_size=block_size, ids=ids, _blocks=blocks, _n=n, tokens=n * block_size)

    def extend(self, tokens: int, role: str | None = None) -> None:
        """Append ``tokens``; with ``role`` they end a chat message of that role (see
        :class:`MessageLog`)."""
        if tokens < 0:
            raise ValueError("tokens must be >= 0")
        self.tokens += tokens
        if role is not None:
            if self.log is None:
                self.log = MessageLog()
            self.log.add(role, self.tokens)
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
        log = self.log
        return RequestPlan(blocks, tail_id, tail, self.block_size, output_tokens, delay_s, kind,
                           log, len(log.ends) if log is not None else 0)


class DesignedCache:
    """What a prefix cache would serve, in send order, at token granularity.

    By default the cache is infinite. ``ttl_s`` keeps a block only while it was used in
    the last ``ttl_s`` seconds (a provider's cache TTL); ``capacity_tokens`` keeps at most
    that many tokens, evicting the least recently used blocks, the deepest first (like
    vLLM). ``observe(plan, now)`` takes the send time for TTLs.

    Block ids are prefix-chained, so the leading blocks still cached form a prefix and
    a binary search finds them (every request that uses a block also uses all blocks
    before it, so recency never increases along a prefix). Beyond full blocks, a partial
    tail seen earlier extends the shared prefix by its length. The result is floored to
    ``server_block_size`` (a cache can only serve whole blocks of its own size) and capped
    at ``prompt_tokens - 1`` rounded down to a block, as vLLM always computes the last
    token.
    """

    __slots__ = ("_lru", "_partial", "_seen", "_tail_used", "_used", "capacity_tokens",
                 "server_block_size", "ttl_s")

    def __init__(self, server_block_size: int = 1, *, ttl_s: float | None = None,
                 capacity_tokens: int | None = None) -> None:
        self._seen: set[int] = set()
        self._used: dict[int, float] = {}
        self._tail_used: dict[int, float] = {}
        self._lru: OrderedDict[int, None] = OrderedDict()
        self._partial: dict[int, int] = {}
        self.server_block_size = server_block_size
        self.ttl_s = ttl_s
        self.capacity_tokens = capacity_tokens

    @property
    def label(self) -> str:
        """``designed`` (infinite), ``designed_ttl_<s>s`` or ``designed_cap_<tokens>``."""
        if self.ttl_s is not None:
            return f"designed_ttl_{self.ttl_s:g}s"
        if self.capacity_tokens is not None:
            return f"designed_cap_{self.capacity_tokens}"
        return "designed"

    def observe(self, plan: RequestPlan, now: float = 0.0) -> int:
        """Record ``plan`` as sent at ``now``; return its designed cached tokens."""
        if self.ttl_s is not None:
            tokens = self._observe_ttl(plan, now, self.ttl_s)
        elif self.capacity_tokens is not None:
            tokens = self._observe_lru(plan, self.capacity_tokens)
        else:
            tokens = self._observe_inf(plan)
        sbs = self.server_block_size
        cap = ((plan.prompt_tokens - 1) // sbs) * sbs
        return max(0, min((tokens // sbs) * sbs, cap))

    def _tail_credit(self, plan: RequestPlan, hits: int, full_tail: bool,
                     partial_ok: Callable[[int], bool]) -> int:
        """Tokens beyond ``hits`` full blocks served by an earlier copy: a partial copy
        of the next block (where ``partial_ok``), or the tail as a cached full block."""
        n = len(plan.blocks)
        if hits < n:
            b = int(plan.blocks[hits])
            return min(self._partial.get(b, 0), plan.block_size) if partial_ok(b) else 0
        if plan.tail_len:
            if full_tail:
                return plan.tail_len
            if partial_ok(plan.tail_id):
                return min(self._partial.get(plan.tail_id, 0), plan.tail_len)
        return 0

    def _note_tail(self, plan: RequestPlan) -> None:
        if plan.tail_len and plan.tail_len > self._partial.get(plan.tail_id, 0):
            self._partial[plan.tail_id] = plan.tail_len

    def _observe_inf(self, plan: RequestPlan) -> int:
        blocks: list[int] = plan.blocks.tolist()
        seen = self._seen
        n = len(blocks)
        if n and blocks[-1] in seen:  # the whole prefix (prefix-chained: all before it too)
            hits = n
        else:
            hits = bisect.bisect_left(blocks, True, key=lambda b: b not in seen)
        tokens = hits * plan.block_size + self._tail_credit(
            plan, hits, plan.tail_id in seen, _always)
        seen.update(blocks[hits:])
        self._note_tail(plan)
        return tokens

    def _observe_ttl(self, plan: RequestPlan, now: float, ttl: float) -> int:
        blocks = plan.blocks
        used = self._used
        tails = self._tail_used
        n = len(blocks)
        floor = now - ttl

        def stale(i: int) -> bool:
            return used.get(int(blocks[i]), -math.inf) < floor

        def partial_fresh(b: int) -> bool:
            return tails.get(b, -math.inf) >= floor

        hits = bisect.bisect_left(range(n), True, key=stale)
        full_tail = used.get(plan.tail_id, -math.inf) >= floor
        tokens = hits * plan.block_size + self._tail_credit(plan, hits, full_tail,
                                                            partial_fresh)
        used.update(dict.fromkeys(blocks.tolist(), now))
        if plan.tail_len:
            if not partial_fresh(plan.tail_id):
                self._partial.pop(plan.tail_id, None)  # an expired copy holds nothing
            tails[plan.tail_id] = now
        self._note_tail(plan)
        return tokens

    def _observe_lru(self, plan: RequestPlan, capacity_tokens: int) -> int:
        lru = self._lru
        cap_blocks = max(1, capacity_tokens // plan.block_size)
        blocks = plan.blocks
        n = len(blocks)
        hits = bisect.bisect_left(range(n), True, key=lambda i: int(blocks[i]) not in lru)
        tokens = hits * plan.block_size + self._tail_credit(
            plan, hits, plan.tail_id in lru, lambda b: ~b in lru)
        # full blocks under their id, partial copies under ~id (each takes a block)
        keys = blocks.tolist()
        if plan.tail_len:
            if ~plan.tail_id not in lru:
                self._partial.pop(plan.tail_id, None)
            keys.append(~plan.tail_id)
        # touch deepest first, so the prefix ends up most recent and is evicted last
        for b in reversed(keys):
            if b in lru:
                lru.move_to_end(b)
            else:
                lru[b] = None
        while len(lru) > cap_blocks:
            old, _ = lru.popitem(last=False)
            if old < 0:
                self._partial.pop(~old, None)
        self._note_tail(plan)
        return tokens


def _always(block: int) -> bool:
    return True
