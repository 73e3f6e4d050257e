"""The simulator's findings (tests/test_sim_findings.py, on the virtual clock) through the
front door: ``serve-sim`` over HTTP, scaled down to seconds of wall time.

Hit-rate findings run at speed-up 5 (2 where tiers race with arrivals): the simulator's
clock is model time, so TTLs and think times keep their meaning at any speed-up, and
hits hardly depend on the client's timing. The timing finding runs at speed-up 1, where
the client's timings hold within the validity bound (docs/concepts/simulator.md,
"Timing over HTTP"), and checks that they do. Each HTTP figure is also held against the
same scenario on the virtual clock.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_ctxplat.api import run_workload, simulate
from pytest_ctxplat.report.result import RunResult
from pytest_ctxplat.sim.config import SimConfig
from pytest_ctxplat.sim.hardware import load_hardware
from pytest_ctxplat.sim.server import serve_in_thread
from pytest_ctxplat.workload.chat import ChatSessions

BLOCK = 16


def _chat(**fields: Any) -> ChatSessions:
    base: dict[str, Any] = dict(users=3, turns=4, think_time_s=1.0, start_spread_s=0.3,
                                system_prompt_tokens=1024, user_tokens=256,
                                output_tokens=8, block_size=BLOCK)
    return ChatSessions(**{**base, **fields})


def _both(spec: ChatSessions, profile: str, overrides: dict[str, Any],
          speedup: float) -> tuple[RunResult, RunResult]:
    """The scenario over HTTP and on the virtual clock (same workload and seed)."""
    config = SimConfig(profile=profile, profile_overrides=overrides, speedup=speedup)
    with serve_in_thread(config) as sim:
        http = run_workload(sim.url, spec, seed=1, name="http")
    virtual = simulate(spec, load_hardware(profile, overrides), seed=1, name="virtual")
    for r in (http, virtual):
        assert r.metrics["errors"] == 0, r.errors_sample
    return http, virtual


def _hit(r: RunResult) -> float:
    assert r.hit_rates.request is not None
    return r.hit_rates.request


def test_a_over_http_hit_rate_rises_with_the_ttl() -> None:
    # turns 1 s apart, no prefix shared between users: a 0.4 s HBM TTL expires each
    # session's blocks between its turns, a 60 s one keeps them
    figs = {}
    for ttl in (0.4, 60.0):
        http, virtual = _both(_chat(system_prompt_tokens=0, user_tokens=512), "h100-llama8b",
                              {"scheduler.block_size": BLOCK, "tiers.0.ttl_s": ttl}, 5.0)
        figs[ttl] = (_hit(http), _hit(virtual))
    print("\n(a) over HTTP, ttl -> (http hit, virtual hit):", figs)
    (short, short_v), (long, long_v) = figs[0.4], figs[60.0]
    # turn k of 4 re-sends (k - 1) x 520 tokens: 6 of 10 parts cached with the long TTL
    assert long == pytest.approx(long_v, abs=0.02) and long == pytest.approx(0.6, abs=0.03)
    assert short == pytest.approx(short_v, abs=0.02) and short < 0.05


def test_b_over_http_a_full_hit_cuts_ttft_of_a_long_prompt() -> None:
    # one 4k-token prompt per user, users one after another: cached but for its last
    # token (a shared 4k system prompt: all but the first user hit) or not at all
    figs = {}
    for shared in (0, 4096):
        spec = _chat(users=4, turns=1, start_spread_s=1.5, system_prompt_tokens=shared,
                     user_tokens=4096 - shared + 1, output_tokens=4)
        http, virtual = _both(spec, "h100-llama8b", {"scheduler.block_size": BLOCK}, 1.0)
        assert http.timing is not None and http.timing["valid"], http.timing
        figs[shared] = (http.observed["ttft_ms.p50"], virtual.observed["ttft_ms.p50"])
    print("\n(b) over HTTP, shared tokens -> TTFT p50 ms (http, virtual):", figs)
    (miss, miss_v), (hit, hit_v) = figs[0], figs[4096]
    assert miss is not None and hit is not None and miss_v is not None and hit_v is not None
    # figures within the validity bound of the virtual run's
    bound = http.timing["bound"]
    for got, want in ((miss, miss_v), (hit, hit_v)):
        assert abs(got - want) <= max(bound["max_ms"], bound["max_ratio"] * want)
    assert miss > 5 * hit


def test_c_over_http_hbm_only_falls_first_dram_holds() -> None:
    # 4 users of ~1k-token sessions in 2k tokens of HBM: the working set spills, and
    # only a DRAM tier behind it keeps the hits (all of them: 0.6, as with no bound)
    hbm = {"scheduler.block_size": BLOCK, "tiers.0.capacity_tokens": 2048}
    figs = {}
    for name, profile, extra in (("hbm", "h100-llama8b", {}),
                                 ("dram", "h100-llama8b-dram",
                                  {"tiers.1.capacity_tokens": 65_536})):
        http, virtual = _both(_chat(users=4, system_prompt_tokens=0, user_tokens=256),
                              profile, {**hbm, **extra}, 2.0)
        figs[name] = (_hit(http), _hit(virtual))
    print("\n(c) over HTTP, tiers -> (http hit, virtual hit):", figs)
    (hbm_hit, hbm_v), (dram_hit, dram_v) = figs["hbm"], figs["dram"]
    assert dram_hit > hbm_hit + 0.3
    # evictions, demotions and loads race with arrivals, which HTTP shifts by its own
    # overhead: hits agree with the virtual run's within a few points, not exactly
    assert dram_hit == pytest.approx(dram_v, abs=0.08)
    assert hbm_hit == pytest.approx(hbm_v, abs=0.1)


def test_e_over_http_prefix_aware_routing_beats_round_robin() -> None:
    figs = {}
    for router in ("round_robin", "prefix"):
        overrides = {"scheduler.block_size": BLOCK, "replicas": 3, "router": router}
        # 4 users on 3 replicas: round robin sends a session's turns to other replicas
        http, virtual = _both(_chat(users=4, system_prompt_tokens=0, user_tokens=512),
                              "h100-llama8b", overrides, 5.0)
        figs[router] = (_hit(http), _hit(virtual))
    print("\n(e) over HTTP, 3 replicas -> (http hit, virtual hit):", figs)
    (rr, rr_v), (prefix, prefix_v) = figs["round_robin"], figs["prefix"]
    assert prefix > rr + 0.2
    assert prefix == pytest.approx(prefix_v, abs=0.02)
    assert rr == pytest.approx(rr_v, abs=0.1)
