"""Working-set kinds (parity with kv-cache-tester's testers).

- ``target_cache_rate``: a working set of ``working_set_tokens`` made of prefixes of
  ``cache_rate * prompt_tokens`` tokens; every request is one prefix from the set plus
  a unique suffix, so once the set is warm the hit rate is ``cache_rate`` if the cache
  holds the whole working set. Prefixes are picked round-robin (deterministic, users
  interleaved) or at random.
- ``growing_working_set``: the same, but the set starts at ``working_set_tokens`` and
  gains ``growth_tokens_per_request`` with every request until ``max_working_set_tokens``:
  the load walks out of HBM into DRAM and NVMe.
- ``single_prompt``: one user sends each prompt twice, cold then warm, at context sizes
  doubling from ``min_tokens`` to ``max_tokens``: the TTFT gain of a hit per size.

Each user request is its own one-request session, so open-loop arrivals apply per
request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from ..config import FieldError, setting
from .model import SessionPlan, SessionStream
from .spec import WorkloadContext, WorkloadSpec

__all__ = ["GrowingWorkingSet", "SinglePrompt", "TargetCacheRate"]

SELECTIONS = ("round_robin", "random")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TargetCacheRate(WorkloadSpec):
    """Requests = a cached prefix from a working set + a unique suffix."""

    kind = "target_cache_rate"
    working_set_tokens: int = setting(200_000, gt=0, doc="tokens of cached prefixes cycled "
                                      "through")
    prompt_tokens: int = setting(8192, ge=2, doc="tokens per request")
    cache_rate: float = setting(0.75, ge=0, le=1, doc="share of each prompt from the set")
    selection: str = setting("round_robin", choices=SELECTIONS, doc="how the next prefix "
                             "is chosen")
    requests_per_user: int | None = setting(None, gt=0, doc="requests each user sends")
    think_time_s: float = setting(0.0, ge=0, doc="pause between a user's requests")

    def validate(self) -> None:
        if (self.requests_per_user is None and self.bound_s is None
                and self.max_requests is None):
            raise FieldError("requests_per_user", "set requests_per_user, duration_s or "
                             "max_requests (the working set cycles forever)")

    @property
    def prefix_blocks(self) -> int:
        """Whole blocks of the cached prefix (the suffix is never shared)."""
        cached = min(round(self.cache_rate * self.prompt_tokens), self.prompt_tokens - 1)
        return cached // self.block_size

    def set_size(self, request_index: int) -> int:
        """Prefixes in the working set when the ``request_index``-th request is sent."""
        per = max(1, self.prefix_blocks) * self.block_size
        return max(1, self.working_set_tokens // per)

    def _prefix(self, ctx: WorkloadContext, i: int) -> npt.NDArray[np.int64]:
        key = ("working-set", self.prefix_blocks, i)
        if key not in ctx.shared:
            ctx.shared[key] = ctx.ids.take(self.prefix_blocks)
        ids: npt.NDArray[np.int64] = ctx.shared[key]
        return ids

    def user_sessions(self, user: int, ctx: WorkloadContext) -> Iterator[SessionPlan]:
        rng = ctx.rng(self.kind, user)
        k = 0
        suffix = self.prompt_tokens - self.prefix_blocks * self.block_size
        while self.requests_per_user is None or k < self.requests_per_user:
            global_index = k * self.users + user
            n = self.set_size(global_index)
            i = rng.randrange(n) if self.selection == "random" else global_index % n
            stream = SessionStream.start(self.block_size, ctx.ids, self._prefix(ctx, i))
            stream.extend(suffix, role="user")
            delay = self.think_time_s if k else 0.0
            yield SessionPlan(f"u{user}-r{k}",
                              iter([stream.request(self.output_tokens, delay, "working_set")]))
            k += 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class GrowingWorkingSet(TargetCacheRate):
    """A working set that grows with every request, up to a maximum."""

    kind = "growing_working_set"
    working_set_tokens: int = setting(50_000, gt=0, doc="the working set at the start")
    max_working_set_tokens: int = setting(2_000_000, gt=0, doc="the largest working set")
    growth_tokens_per_request: int = setting(4096, ge=0, doc="growth per request sent")
    selection: str = setting("random", choices=SELECTIONS, doc="how the next prefix is "
                             "chosen")

    def validate(self) -> None:
        super().validate()
        if self.max_working_set_tokens < self.working_set_tokens:
            raise FieldError("max_working_set_tokens", "must be >= working_set_tokens "
                                                       f"({self.working_set_tokens})")

    def set_size(self, request_index: int) -> int:
        tokens = min(self.max_working_set_tokens,
                     self.working_set_tokens + request_index * self.growth_tokens_per_request)
        per = max(1, self.prefix_blocks) * self.block_size
        return max(1, tokens // per)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SinglePrompt(WorkloadSpec):
    """Each prompt twice (cold, then warm) at doubling context sizes."""

    kind = "single_prompt"
    users: int = setting(1, gt=0, doc="users, each sending the whole ladder")
    min_tokens: int = setting(1024, ge=2, doc="the smallest prompt")
    max_tokens: int = setting(65536, ge=2, doc="the largest prompt (sizes double)")
    repeats: int = setting(1, gt=0, doc="times each size is sent (cold, then warm)")
    gap_s: float = setting(0.0, ge=0, doc="pause before each request")

    def validate(self) -> None:
        if self.min_tokens > self.max_tokens:
            raise FieldError("max_tokens", f"must be >= min_tokens ({self.min_tokens})")

    def sizes(self) -> list[int]:
        out = []
        size = self.min_tokens
        while size <= self.max_tokens:
            out.append(size)
            size *= 2
        return out

    def user_sessions(self, user: int, ctx: WorkloadContext) -> Iterator[SessionPlan]:
        for size in self.sizes():
            for r in range(self.repeats):
                stream = SessionStream.start(self.block_size, ctx.ids, np.zeros(0, np.int64))
                stream.extend(size, role="user")
                cold = stream.request(self.output_tokens, self.gap_s, f"cold_{size}")
                warm = stream.request(self.output_tokens, self.gap_s, f"warm_{size}")
                yield SessionPlan(f"u{user}-{size}-{r}", iter([cold, warm]))
