"""Several simulated engines: data-parallel replicas behind a router, and disaggregated
prefill/decode pools.

* :class:`Cluster` builds ``profile.replicas`` engines (aggregated), or
  ``disaggregation.prefill_replicas`` prefill engines plus ``decode_replicas`` decode
  engines, all on one clock.
* :class:`Router` picks a replica per request: ``round_robin``; ``least_loaded`` (fewest
  waiting + running requests); ``session`` (affinity: a session's first request goes to
  the least loaded replica (ties in turn), later ones to the same replica; sessions are
  named by the ``X-Session-ID`` header over HTTP, by the workload's session id in
  process); ``prefix`` (the replica holding the longest cached prefix of the prompt in
  HBM or a lower tier, estimated by binary search; ties to the least loaded).
* Disaggregated: the request is prefilled on a prefill engine (``max_tokens=1``), then
  its prompt KV (the blocks the decode engine does not already hold) crosses a
  :class:`~pytest_ctxplat.sim.engine.KvLink` (``transfer_gbs``, ``latency_s``, FIFO per
  decode engine) and the decode engine generates every output token.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from pytest_ctxplat.sim.config import SimConfig
from pytest_ctxplat.sim.engine import Engine, KvLink
from pytest_ctxplat.sim.hardware import HardwareProfile
from pytest_ctxplat.sim.timing import Clock

__all__ = ["Cluster", "Router"]


class Router:
    """Chooses one of ``engines`` for each request (see the module docstring)."""

    def __init__(self, engines: Sequence[Engine], policy: str = "prefix") -> None:
        self.engines = list(engines)
        self.policy = policy
        self._rr = itertools.cycle(range(len(self.engines)))
        self._sessions: dict[str, int] = {}

    def _least_loaded(self) -> int:
        """The replica with the fewest requests; ties go round the replicas in turn."""
        n = len(self.engines)
        start = next(self._rr)
        order = [(start + k) % n for k in range(n)]
        return min(order, key=lambda i: self.engines[i].load)

    def pick(self, hashes: Sequence[int], session_id: str | None = None) -> Engine:
        engines = self.engines
        if len(engines) == 1:
            return engines[0]
        policy = self.policy
        if policy == "round_robin":
            return engines[next(self._rr)]
        if policy == "least_loaded":
            return engines[self._least_loaded()]
        if policy == "session" and session_id is not None:
            i = self._sessions.get(session_id)
            if i is None:
                i = self._sessions[session_id] = self._least_loaded()
            return engines[i]
        best, best_key = 0, (-1, 0)
        for i, e in enumerate(engines):
            key = (_cached_prefix(e, hashes), -e.load)
            if key > best_key:
                best, best_key = i, key
        return engines[best]


def _cached_prefix(engine: Engine, hashes: Sequence[int]) -> int:
    """How many leading ``hashes`` ``engine`` holds in HBM or a lower tier, found by
    binary search: it assumes a cached prefix has no holes (blocks are freed and evicted
    tail first), as an approximate KV index does; exact enough to route by."""
    by_hash = engine.cache._by_hash
    lrus = [t._lru for t in engine.tiers.tiers]

    def held(i: int) -> bool:
        h = hashes[i]
        return h in by_hash or any(h in lru for lru in lrus)

    lo, hi = 0, len(hashes)  # hashes[:lo] held; hashes[hi:] not
    while lo < hi:
        mid = (lo + hi) // 2
        if held(mid):
            lo = mid + 1
        else:
            hi = mid
    return lo


class Cluster:
    """The engines of one profile: replicas behind a router, or prefill/decode pools."""

    def __init__(self, config: SimConfig, profile: HardwareProfile,
                 clock: Clock | None = None) -> None:
        self.profile = profile
        d = profile.disaggregation
        if d is None:
            self.engines = [Engine(config, clock, profile=profile, name=str(i))
                            for i in range(profile.replicas)]
            self.prefill: Router | None = None
            self.decode = Router(self.engines, profile.router)
        else:
            pre = [Engine(config, clock, profile=profile, name=f"prefill{i}")
                   for i in range(d.prefill_replicas)]
            dec = [Engine(config, clock, profile=profile, name=f"decode{i}")
                   for i in range(d.decode_replicas)]
            for e in dec:
                e.kv_link = KvLink(d.transfer_gbs / e.slowdown, d.latency_s * e.slowdown)
            self.engines = pre + dec
            self.prefill = Router(pre, profile.router)
            self.decode = Router(dec, profile.router)

        for e in self.engines:
            e.peers = self.engines

    @property
    def config(self) -> SimConfig:
        return self.engines[0].config

    @property
    def disaggregated(self) -> bool:
        return self.prefill is not None

    def start(self) -> None:
        for e in self.engines:
            e.start()

    async def stop(self) -> None:
        for e in self.engines:
            await e.stop()
