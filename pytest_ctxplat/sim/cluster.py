"""Several simulated engines: data-parallel replicas behind a router, and disaggregated
prefill/decode pools.

* :class:`Cluster` builds ``profile.replicas`` engines (aggregated), or
  ``disaggregation.prefill_replicas`` prefill engines plus ``decode_replicas`` decode
  engines, all on one clock.
* :class:`Router` picks a replica per request: ``round_robin``; ``least_loaded`` (fewest
  waiting + running requests); ``session`` (affinity: a session's first request goes to
  the least loaded replica, later ones to the same replica; sessions are named by the
  ``X-Session-ID`` header over HTTP, by the workload's session id in process); ``prefix``
  (the replica holding the longest cached prefix of the prompt in HBM or a lower tier,
  ties to the least loaded).
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
from pytest_ctxplat.sim.profile import Profile
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
        return min(range(len(self.engines)), key=lambda i: self.engines[i].load)

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
            hit = e.cache.lookup(hashes)
            if e.tiers:
                hit += len(e.tiers.find(hashes, hit))
            key = (hit, -e.load)
            if key > best_key:
                best, best_key = i, key
        return engines[best]


class Cluster:
    """The engines of one profile: replicas behind a router, or prefill/decode pools."""

    def __init__(self, config: SimConfig, profile: Profile, clock: Clock | None = None) -> None:
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
                e.kv_link = KvLink(d.transfer_gbs, d.latency_s)
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
