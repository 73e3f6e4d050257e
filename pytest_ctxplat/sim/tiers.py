"""KV tiers below HBM (DRAM, pooled DRAM, NVMe, remote stores) and their links.

The HBM block pool is :class:`~pytest_ctxplat.sim.cache.PrefixCache`; this module holds
the lower tiers, in cascade order. The model:

* **Contents.** Each tier is an LRU set of block hashes with a capacity in blocks and an
  optional TTL (time since last use). Tiers are *inclusive*: a block loaded back into HBM
  keeps its copy below, so evicting it again costs no write.
* **Cascade.** A block leaving HBM (LRU eviction, or its HBM TTL) is written to the first
  lower tier; a block leaving tier *k* (capacity or TTL) is written to tier *k+1*; a
  block leaving the last tier is gone ("lost").
* **Links.** Each tier has a read link and a write link, each a FIFO: a transfer starts
  when the link is free and takes ``bytes / bandwidth`` (plus ``latency_s`` for reads).
  Loads of concurrent requests therefore queue behind each other.
* **Slow writes.** The writes of one engine step must be done by the end of the step
  plus ``write_queue_s``. With ``write_policy: drop`` a block that would finish later is
  not written (counted in ``drops``; the block is lost); with ``stall`` it is written and
  the step is extended until the write is done (the GPU waits).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from pytest_ctxplat.sim.hardware import TierSpec

__all__ = ["LostBlocks", "TierChain", "TierCounters", "TierStore"]


@dataclass
class TierCounters:
    """Cumulative per-tier counters (blocks and bytes)."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    expirations: int = 0
    drops: int = 0
    writes: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    load_s: float = 0.0  # read-link time spent loading blocks into HBM (model seconds)


class TierStore:
    """One lower tier: LRU contents plus its read and write links."""

    def __init__(self, spec: TierSpec, block_size: int, block_bytes: int) -> None:
        self.spec = spec
        self.name = spec.name
        self.capacity_blocks = max(1, spec.capacity_tokens // block_size)
        self.block_bytes = block_bytes
        self.read_s_per_block = block_bytes / (spec.read_gbs * 1e9)
        self.write_s_per_block = block_bytes / (spec.write_gbs * 1e9)
        self.counters = TierCounters()
        self.read_free_at = 0.0
        self.write_free_at = 0.0
        self._lru: OrderedDict[int, float] = OrderedDict()  # hash -> last use

    def __contains__(self, block_hash: int) -> bool:
        return block_hash in self._lru

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def usage(self) -> float:
        return len(self._lru) / self.capacity_blocks

    def insert(self, block_hash: int, now: float) -> list[int]:
        """Store a block; returns the hashes evicted to make room (LRU first)."""
        self._lru[block_hash] = now
        self._lru.move_to_end(block_hash)
        out: list[int] = []
        while len(self._lru) > self.capacity_blocks:
            h, _ = self._lru.popitem(last=False)
            out.append(h)
        self.counters.evictions += len(out)
        return out

    def expire(self, now: float) -> list[int]:
        """Remove blocks unused for longer than the TTL; returns their hashes."""
        ttl = self.spec.ttl_s
        if ttl is None or not self._lru:
            return []
        cutoff = now - ttl
        out: list[int] = []
        lru = self._lru
        while lru:
            h, t = next(iter(lru.items()))
            if t >= cutoff:
                break
            lru.popitem(last=False)
            out.append(h)
        self.counters.expirations += len(out)
        return out

    def clear(self) -> None:
        self._lru.clear()


class LostBlocks:
    """Hashes of blocks that left every tier, so a later recompute counts as a re-fill.
    Bounded (oldest forgotten first) to keep memory flat on long runs."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self.limit = limit
        self._lost: OrderedDict[int, None] = OrderedDict()

    def add(self, hashes: Sequence[int]) -> None:
        lost = self._lost
        for h in hashes:
            lost[h] = None
        while len(lost) > self.limit:
            lost.popitem(last=False)

    def take(self, block_hash: int) -> bool:
        """True (and forget it) if ``block_hash`` was lost."""
        if block_hash in self._lost:
            del self._lost[block_hash]
            return True
        return False

    def take_many(self, hashes: Sequence[int], start: int, stop: int) -> int:
        """:meth:`take` for ``hashes[start:stop]``; returns how many were lost."""
        lost = self._lost
        if not lost:
            return 0
        n = 0
        for i in range(start, stop):
            h = hashes[i]
            if h in lost:
                del lost[h]
                n += 1
        return n

    def clear(self) -> None:
        self._lost.clear()


class TierChain:
    """The lower tiers of one engine, in cascade order (may be empty)."""

    def __init__(self, specs: Sequence[TierSpec], block_size: int, block_bytes: int,
                 write_policy: str = "drop") -> None:
        self.tiers = [TierStore(s, block_size, block_bytes) for s in specs]
        self.block_bytes = block_bytes
        self.stall = write_policy == "stall"
        self.lost = LostBlocks()
        # bytes moved per vLLM transfer_type label (e.g. "GPU_to_CPU")
        self.transfer_bytes: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self.tiers)

    def _count(self, src: str, dst: str, n_blocks: int) -> None:
        key = f"{src}_to_{dst}"
        self.transfer_bytes[key] = self.transfer_bytes.get(key, 0) + n_blocks * self.block_bytes

    def find(self, hashes: Sequence[int], start: int) -> list[int]:
        """For ``hashes[start:]``, the tier index holding each block, up to the first
        block no tier holds (a prefix: the chain breaks at the first miss)."""
        where: list[int] = []
        lrus = [t._lru for t in self.tiers]
        if len(lrus) == 1:
            only = lrus[0]
            for h in itertools.islice(hashes, start, None):
                if h not in only:
                    break
                where.append(0)
            return where
        first = lrus[0]
        i, n = start, len(hashes)
        while i < n:
            if hashes[i] in first:  # a run in the fastest tier
                j = i + 1
                while j < n and hashes[j] in first:
                    j += 1
                where.extend([0] * (j - i))
                i = j
                continue
            h = hashes[i]
            for k in range(1, len(lrus)):
                if h in lrus[k]:
                    where.append(k)
                    break
            else:
                break
            i += 1
        return where

    def load(self, hashes: Sequence[int], where: Sequence[int], now: float,
             queried: int) -> float:
        """Start loading ``hashes`` (tier index per block from :meth:`find`) into HBM;
        ``queried`` blocks were asked of the tiers. Returns when all loads are done."""
        counts = [0] * len(self.tiers)
        lrus = [t._lru for t in self.tiers]
        for h, k in zip(hashes, where, strict=True):
            counts[k] += 1
            lru = lrus[k]
            lru[h] = now
            lru.move_to_end(h)
        ready = now
        found = 0
        for k, t in enumerate(self.tiers):
            n = counts[k]
            found += n
            t.counters.misses += queried - found
            if n == 0:
                continue
            t.counters.hits += n
            t.counters.bytes_read += n * self.block_bytes
            self._count(t.spec.transfer_name, "GPU", n)
            start = max(now, t.read_free_at)
            t.read_free_at = start + n * t.read_s_per_block
            t.counters.load_s += n * t.read_s_per_block + t.spec.latency_s
            ready = max(ready, t.read_free_at + t.spec.latency_s)
        return ready

    def note_miss(self, queried: int) -> None:
        """``queried`` blocks were asked of the tiers and none was found."""
        for t in self.tiers:
            t.counters.misses += queried

    def demote(self, hashes: Sequence[int], now: float, step_s: float) -> float:
        """Write blocks leaving HBM down the cascade during a step of ``step_s`` starting
        at ``now``; returns the step's end (later than ``now + step_s`` only when
        writes stall the GPU)."""
        end = now + step_s
        pending = list(hashes)
        for k, t in enumerate(self.tiers):
            if not pending:
                break
            src = "GPU" if k == 0 else self.tiers[k - 1].spec.transfer_name
            deadline = end + t.spec.write_queue_s
            lru = t._lru
            free_at = max(now, t.write_free_at)
            per = t.write_s_per_block
            written = 0
            dropped: list[int] = []
            for h in pending:
                if h in lru:
                    lru[h] = now
                    lru.move_to_end(h)
                    continue
                if free_at + per > deadline and not self.stall:
                    dropped.append(h)
                    continue
                free_at += per
                written += 1
                lru[h] = now
            if written:
                t.write_free_at = free_at
            spilled: list[int] = []
            while len(lru) > t.capacity_blocks:
                spilled.append(lru.popitem(last=False)[0])
            t.counters.evictions += len(spilled)
            if dropped:
                t.counters.drops += len(dropped)
                self.lost.add(dropped)
            if self.stall:
                end = max(end, t.write_free_at)
            t.counters.writes += written
            t.counters.bytes_written += written * self.block_bytes
            if written:
                self._count(src, t.spec.transfer_name, written)
            pending = spilled
        self.lost.add(pending)
        return end

    def expire(self, now: float) -> None:
        """Apply each tier's TTL; expired blocks move one tier down (no write-link cost
        is charged for these background moves) or are lost from the last tier."""
        carry: list[int] = []
        for t in self.tiers:
            moved: list[int] = []
            for h in carry:
                if h not in t:
                    moved.extend(t.insert(h, now))
            carry = moved + t.expire(now)
        self.lost.add(carry)

    def clear(self) -> None:
        for t in self.tiers:
            t.clear()
        self.lost.clear()
