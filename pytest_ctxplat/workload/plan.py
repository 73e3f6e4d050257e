"""Plan a workload offline: every request it would send, when, and its designed hits.

:func:`plan_workload` walks the sessions the runner would play, without a server: each
response is assumed to take ``ttft_s + output_tokens / decode_tps`` seconds. Subagents
run concurrently from their spawn time and the parent resumes when the last one ends;
ramps, stages, open-loop arrivals and trace timestamps apply as in the runner (token
budgets do not: they depend on the server). The result orders requests by send time, so
its designed hit rates (infinite, or for a TTL or capacity) are those the runner would
compute for a server with these response times.

>>> p = plan_workload(load_workload("coding_swarm", {"users": 4}), duration_s=600)
>>> p.designed_rate(), p.designed_rate(ttl_s=60)                     # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from .model import DesignedCache, RequestPlan, SessionPlan, SpawnStep
from .spec import WorkloadContext, WorkloadSpec

__all__ = ["Plan", "plan_workload"]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Requests in send order (``t_s``), with who sends them."""

    t_s: npt.NDArray[np.float64]
    user: npt.NDArray[np.int64]
    session_id: list[str]
    requests: list[RequestPlan]
    root_session: list[str] = dataclasses.field(default_factory=list)  # subagents: parent's

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def prompt_tokens(self) -> npt.NDArray[np.int64]:
        return np.fromiter((r.prompt_tokens for r in self.requests), np.int64, len(self))

    def designed_tokens(self, *, server_block_size: int = 1, ttl_s: float | None = None,
                        capacity_tokens: int | None = None) -> npt.NDArray[np.int64]:
        """Designed cached tokens per request for an infinite cache, a TTL or a
        capacity (LRU, deepest blocks evicted first)."""
        cache = DesignedCache(server_block_size, ttl_s=ttl_s, capacity_tokens=capacity_tokens)
        times = self.t_s.tolist()
        return np.fromiter((cache.observe(r, t) for r, t in zip(self.requests, times,
                                                               strict=True)),
                           np.int64, len(self))

    def designed_rate(self, **kwargs: float | int | None) -> float | None:
        """Token-weighted designed hit rate (see :meth:`designed_tokens`)."""
        prompt = int(self.prompt_tokens.sum())
        if not prompt:
            return None
        return float(self.designed_tokens(**kwargs).sum()) / prompt  # type: ignore[arg-type]


class _Walk:
    def __init__(self, spec: WorkloadSpec, bound: float, ttft_s: float, decode_tps: float):
        self.spec = spec
        self.bound = bound
        self.ttft_s = ttft_s
        self.decode_tps = decode_tps
        self.out: list[tuple[float, int, int, str, RequestPlan]] = []
        self.roots: dict[int, str] = {}  # seq -> the top-level session's id
        self.seq = 0

    def service(self, plan: RequestPlan) -> float:
        return self.ttft_s + plan.output_tokens / self.decode_tps

    def play(self, user: int, session: SessionPlan, t: float, root: str = "") -> float:
        """Walk ``session`` from time ``t``; return when it ends (inf: past the bound)."""
        root = root or session.session_id
        load = self.spec.load
        for step in session.steps:
            t += step.delay_s
            if load.stages:
                t = load.next_active(user, t)
            if t >= self.bound:
                return math.inf
            if isinstance(step, SpawnStep):
                ends = [self.play(user, c, t, root) for c in step.children]
                if step.wait:
                    t = max([t, *ends])
                continue
            self.out.append((t, self.seq, user, session.session_id, step))
            self.roots[self.seq] = root
            self.seq += 1
            t += self.service(step)
        return t


def plan_workload(spec: WorkloadSpec, *, seed: int = 0, duration_s: float | None = None,
                  ttft_s: float = 0.5, decode_tps: float = 50.0) -> Plan:
    """Plan ``spec`` (see the module docstring). ``duration_s`` defaults to the spec's
    bound; a spec without any bound must end by itself."""
    bound = duration_s if duration_s is not None else spec.bound_s
    walk = _Walk(spec, math.inf if bound is None else bound, ttft_s, decode_tps)
    ctx = WorkloadContext(seed=seed)
    timed = spec.timed_requests(ctx)
    if timed is not None:
        for req in timed:
            if req.t_s >= walk.bound:
                break
            walk.out.append((req.t_s, walk.seq, req.user, req.session_id, req.plan))
            walk.seq += 1
    elif spec.load.open_loop:
        rng = ctx.rng("arrivals")
        t = 0.0
        k = 0
        while True:
            t += spec.load.interarrival(rng)
            if t >= walk.bound:
                break
            session = next(iter(spec.user_sessions(k, ctx)), None)
            if session is None:
                break
            walk.play(k, session, t)
            k += 1
    else:
        for user in range(spec.user_count()):
            t = spec.load.start_time(user, spec.users)
            for session in spec.user_sessions(user, ctx):
                t = walk.play(user, session, t)
                if t >= walk.bound:
                    break
    rows: Iterator[tuple[float, int, int, str, RequestPlan]] = iter(sorted(
        walk.out, key=lambda r: (r[0], r[1])))
    if spec.max_requests is not None:
        rows = (r for _, r in zip(range(spec.max_requests), rows, strict=False))
    picked = list(rows)
    return Plan(t_s=np.fromiter((r[0] for r in picked), np.float64, len(picked)),
                user=np.fromiter((r[2] for r in picked), np.int64, len(picked)),
                session_id=[r[3] for r in picked], requests=[r[4] for r in picked],
                root_session=[walk.roots.get(r[1], r[3]) for r in picked])

