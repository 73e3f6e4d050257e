"""Decode bursts: several pure-decode steps of one engine computed in one go.

On a virtual clock nothing can happen between two timers, so when an engine's batch is
all decoding sequences (none waiting, none prefilling, none loading) it may run step
after step without going through the event loop, up to the next timer of any other task
(:meth:`~pytest_ctxplat.sim.virtual.VirtualClock.horizon`). The steps are the same as
the normal path's (same roofline times, block allocation and caching, tier writes, one
token per sequence per step, each stamped with its own time); a burst stops before any
sequence's last token, before a block cannot be allocated, and before the horizon, so
finishes, preemptions and arrivals all go through the normal scheduler. It changes the
simulator's speed, not its results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pytest_ctxplat.sim.cache import PrefixCache
from pytest_ctxplat.sim.request import Request, RequestState
from pytest_ctxplat.sim.stats import EngineStats
from pytest_ctxplat.sim.tiers import TierChain
from pytest_ctxplat.sim.timing import StepWork

__all__ = ["BurstParts", "decode_burst"]


@dataclass(frozen=True)
class BurstParts:
    """What a burst works on: the engine's cache, tiers, counters and step timing."""

    cache: PrefixCache
    tiers: TierChain
    stats: EngineStats
    step_time: Callable[[StepWork], float]
    block_size: int
    max_num_batched_tokens: int

MIN_STEPS = 2


def decode_burst(reqs: Sequence[Request], parts: BurstParts, now: float, horizon: float
                 ) -> float:
    """Run decode steps of the running requests ``reqs`` (nothing waiting) from ``now``
    while allowed; returns the model time they end at (``now`` when no step ran). The
    caller sleeps until then."""
    if not reqs or len(reqs) > parts.max_num_batched_tokens:
        return now
    k_max = -1
    ctx = 0
    for r in reqs:
        if (r.num_out == 0 or r.all_len - r.num_computed != 1 or r.ready_at > now
                or r.state is not RequestState.RUNNING):
            return now
        left = r.max_tokens - r.num_out - 1  # leave the last token to the normal path
        k_max = left if k_max < 0 else min(k_max, left)
        ctx += r.num_computed + 1
    if k_max < MIN_STEPS:
        return now
    n = len(reqs)
    bs = parts.block_size
    cache, tiers, stats = parts.cache, parts.tiers, parts.stats
    step_time = parts.step_time
    lost = tiers.lost
    t = now
    steps = 0
    while steps < k_max:
        dt = step_time(StepWork(0, 0, n, ctx))
        if t + dt > horizon:
            break
        need = [r for r in reqs if r.num_computed + 1 > len(r.blocks) * bs]
        if need:
            fresh = cache.allocate(len(need))
            if fresh is None:
                break
            for r, b in zip(need, fresh, strict=True):
                r.blocks.append(b)
            evicted = cache.evicted
            if evicted:
                cache.evicted = []
                end = tiers.demote(evicted, t, dt)
                if end > t + dt:
                    stats.stall_s += end - t - dt
                    dt = end - t
        t += dt
        for r in reqs:
            r.num_computed += 1
            full = r.num_computed // bs
            if full > r.num_registered:
                cache.cache_blocks(r.blocks, r.hashes, r.num_registered, full)
                stats.refill_blocks += lost.take_many(r.hashes, r.num_registered, full)
                stats.computed_blocks += full - r.num_registered
                r.num_registered = full
            r.push_token(t)
        ctx += n
        steps += 1
    stats.num_steps += steps
    stats.generation_tokens += steps * n
    stats.busy_s += t - now
    return t
