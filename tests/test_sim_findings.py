"""The findings the simulator must reproduce (issue 3, "Done when" a-e), on small runs in
virtual time. Figures are printed (``-s``) for the report."""

from __future__ import annotations

import pytest
from sim_support import BLOCK, agent_sessions, counters, run, tier_profile

from pytest_ctxplat.report.result import RunResult
from pytest_ctxplat.sim.hardware import load_hardware
from pytest_ctxplat.workload.chat import ChatSessions
from pytest_ctxplat.workload.sessions import LongSessions

KINDS = ("hbm", "dram", "nvme", "slow")


def _figures(r: RunResult) -> dict[str, float]:
    return {"hit": r.hit_rates.request or 0.0, "tps": r.metrics["output_tokens_per_s"],
            "ttft_p50_ms": r.observed["ttft_ms.p50"]}


# -- (a) TTL -------------------------------------------------------------------------
def test_a_hit_rate_rises_and_refills_fall_as_ttl_grows() -> None:
    rows = []
    for ttl in (60.0, 300.0, 3600.0):
        profile = load_hardware("h100-llama8b-dram", {
            "scheduler.block_size": BLOCK, "tiers.0.capacity_tokens": 32_000,
            "tiers.1.capacity_tokens": 10_000_000, "tiers.1.ttl_s": ttl})
        # human gaps: 10 s to 10 min between turns
        spec = LongSessions(users=16, duration_s=3600.0, block_size=BLOCK,
                                 shared_prefix_tokens=1024, initial_tokens=4000,
                                 turn_tokens_min=500, turn_tokens_max=1500,
                                 max_context_tokens=20_000, output_tokens=50,
                                 think_min_s=10.0, think_max_s=600.0, start_spread_s=60.0)
        r = run(spec, profile)
        c = counters(r)
        computed = c["ctxplat_sim:kv_computed_blocks_total"]
        refills = c["ctxplat_sim:kv_refill_blocks_total"] / computed
        rows.append((ttl, r.hit_rates.request or 0.0, refills))
    print("\n(a) ttl_s, hit rate, re-fills per computed block:", rows)
    hits = [h for _, h, _ in rows]
    refills = [f for _, _, f in rows]
    assert hits[0] + 0.15 < hits[1] and hits[1] + 0.1 < hits[2]
    assert refills[0] > refills[1] > refills[2]
    assert refills[2] < 0.05


# -- (b) non-linear value of the hit rate ----------------------------------------------
def test_b_output_tps_vs_hit_rate_is_nonlinear_for_long_context() -> None:
    long_ctx = 32_768
    profile = load_hardware("h100-llama8b", {"scheduler.block_size": BLOCK})
    points = []
    for target in (0.0, 0.1, 0.9, 1.0):
        shared = int(long_ctx * target) // BLOCK * BLOCK
        spec = ChatSessions(users=8, turns=1, think_time_s=0.0, system_prompt_tokens=shared,
                            user_tokens=max(long_ctx - shared, 1), output_tokens=64,
                            block_size=BLOCK, recycle=True, duration_s=60.0, start_spread_s=0.0)
        r = run(spec, profile)  # type: ignore[arg-type]
        points.append((r.hit_rates.request or 0.0, r.metrics["output_tokens_per_s"]))
    print("\n(b) (hit rate, output tok/s):", points)
    (h0, t0), (h10, t10), (h90, t90), (h100, t100) = points
    assert h10 - h0 == pytest.approx(0.1, abs=0.02) and h100 - h90 > 0.09
    first, last = t10 - t0, t100 - t90
    assert first > 0 and last > 10 * first
    assert t100 > 5 * t0


# -- (c) ramping users over four tier configurations ------------------------------------
@pytest.fixture(scope="module")
def ramp() -> dict[tuple[int, str], dict[str, float]]:
    out = {}
    for users in (2, 8, 32):
        for kind in KINDS:
            r = run(agent_sessions(users, 300.0 if users < 32 else 240.0), tier_profile(kind))
            out[(users, kind)] = _figures(r)
    print("\n(c) users, config -> figures:")
    for key, fig in out.items():
        print("   ", key, {k: round(v, 3) for k, v in fig.items()})
    return out


def test_c_equal_while_the_working_set_fits_hbm(ramp: dict) -> None:
    base = ramp[(2, "hbm")]
    for kind in KINDS[1:]:
        fig = ramp[(2, kind)]
        assert fig["hit"] == pytest.approx(base["hit"], abs=0.01)
        assert fig["tps"] == pytest.approx(base["tps"], rel=0.02)
    assert base["hit"] > 0.8


def test_c_hbm_only_falls_first(ramp: dict) -> None:
    hbm, dram = ramp[(8, "hbm")], ramp[(8, "dram")]
    assert hbm["hit"] < dram["hit"] - 0.4
    assert hbm["ttft_p50_ms"] > 3 * dram["ttft_p50_ms"]
    for kind in ("nvme", "slow"):
        assert ramp[(8, kind)]["hit"] == pytest.approx(dram["hit"], abs=0.02)


def test_c_dram_falls_past_its_capacity_nvme_sustains(ramp: dict) -> None:
    dram, nvme = ramp[(32, "dram")], ramp[(32, "nvme")]
    assert dram["hit"] < ramp[(8, "dram")]["hit"] - 0.4
    assert nvme["hit"] > dram["hit"] + 0.3
    assert nvme["tps"] > 1.3 * dram["tps"]
    assert nvme["ttft_p50_ms"] < dram["ttft_p50_ms"] / 3


def test_c_slow_store_holds_hits_but_gains_little(ramp: dict) -> None:
    slow, dram, nvme = ramp[(32, "slow")], ramp[(32, "dram")], ramp[(32, "nvme")]
    assert slow["hit"] > dram["hit"] + 0.3  # it holds the hits...
    assert slow["tps"] < 1.1 * dram["tps"]  # ...but its loads are too slow to pay
    assert slow["tps"] < 0.75 * nvme["tps"]


# -- (d) sanity figures (roofline) are in test_sim_profiles.py -------------------------


# -- (e) replicas and disaggregation -------------------------------------------------
def test_e_prefix_aware_routing_beats_round_robin() -> None:
    spec = agent_sessions(8, 600.0)
    figs = {}
    for router in ("round_robin", "prefix", "session"):
        profile = load_hardware("h100-llama8b", {"scheduler.block_size": BLOCK,
                                                "tiers.0.capacity_tokens": 200_000,
                                                "replicas": 4, "router": router})
        r = run(spec, profile)
        figs[router] = _figures(r) | {"ttft_p95_ms": r.observed["ttft_ms.p95"]}
    print("\n(e) 4 replicas:", figs)
    rr, prefix = figs["round_robin"], figs["prefix"]
    assert prefix["hit"] > rr["hit"] + 0.1
    assert prefix["ttft_p50_ms"] < 0.8 * rr["ttft_p50_ms"]
    assert figs["session"]["hit"] > rr["hit"] + 0.1


def test_e_tier_comparison_holds_disaggregated() -> None:
    disagg = {"disaggregation": {"prefill_replicas": 1, "decode_replicas": 1,
                                 "transfer_gbs": 50.0}}
    figs = {kind: _figures(run(agent_sessions(32, 240.0), tier_profile(kind, **disagg)))
            for kind in KINDS}
    print("\n(e) disaggregated, 32 users:", figs)
    hbm, dram, nvme, slow = (figs[k] for k in KINDS)
    assert hbm["hit"] < dram["hit"] < nvme["hit"] - 0.3
    assert nvme["tps"] > 1.1 * dram["tps"] and nvme["tps"] > 1.1 * hbm["tps"]
    assert slow["hit"] > dram["hit"] + 0.3 and slow["tps"] < 0.75 * nvme["tps"]
    # TTFT counts prefill, KV transfer and the first decode step
    assert nvme["ttft_p50_ms"] < dram["ttft_p50_ms"] / 3 < hbm["ttft_p50_ms"] / 3


