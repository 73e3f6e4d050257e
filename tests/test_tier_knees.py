"""Where each KV tier runs out: the ``tier_spill`` workload, the knee search over working
sets (points, knees per tier, the ``knee_min_tokens`` objective) and its report."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from pytest_ctxplat.api import find_knees, simulate, write_html_report
from pytest_ctxplat.errors import ConfigError, SLOViolation
from pytest_ctxplat.orchestrator.knees import KneeSpec, knee_result, tier_knees
from pytest_ctxplat.report import plots
from pytest_ctxplat.servers.scrape import parse_metrics
from pytest_ctxplat.slo import parse_slo

PROFILE = "h100-llama8b-nvme"
HBM, DRAM, NVME = 16_384, 65_536, 262_144
TIERS = {"tiers.0.capacity_tokens": HBM, "tiers.1.capacity_tokens": DRAM,
         "tiers.2.capacity_tokens": NVME, "write_policy": "stall"}
SPILL = {"prefix_tokens": 2048}
HALF_AND_DOUBLE = {"multiples": [0.5, 2.0]}  # points: 4k, 8k, 32k, 128k, 512k tokens


@pytest.fixture(scope="module")
def knees_run() -> Any:
    return find_knees(profile=PROFILE, profile_overrides=TIERS, overrides=SPILL,
                      knee_options=HALF_AND_DOUBLE, name="spill")


def test_tier_spill_first_cycle_fills_and_later_cycles_hit_when_the_set_fits() -> None:
    r = simulate("tier_spill", PROFILE, profile_overrides=TIERS,
                 overrides={**SPILL, "working_set_tokens": 8192, "cycles": 3})
    by_cycle: dict[str, list[int]] = {}
    for rec in r.records:
        by_cycle.setdefault(rec.session_id.split("-")[0], []).append(rec.cached_tokens or 0)
    assert sorted(by_cycle) == ["c0", "c1", "c2"]
    assert all(len(v) == 4 for v in by_cycle.values())  # 8192 / 2048 distinct prefixes
    assert by_cycle["c0"] == [0, 0, 0, 0]  # every prefix is new in the first cycle
    assert all(c >= 2048 for c in by_cycle["c1"] + by_cycle["c2"])


def test_tier_spill_rejects_a_prefix_shorter_than_a_block() -> None:
    with pytest.raises(ConfigError, match="prefix_tokens: must be >= block_size"):
        simulate("tier_spill", PROFILE, overrides={"prefix_tokens": 8})


def test_knees_per_tier_on_hbm_dram_and_nvme(knees_run: Any) -> None:
    knees = knees_run.knees
    assert [p["working_set_tokens"] for p in knees["points"]] == [4096, 8192, 32768,
                                                                  131072, 524288]
    assert knees["capacities"] == {"hbm": HBM, "dram": DRAM, "nvme": NVME}
    first = knees["points"][0]["tier_hit_rates"]
    assert first["hbm"] > 0.9 and first["dram"] == first["nvme"] == 0.0
    found = knees["tiers"]
    # each tier holds the working sets below its capacity and runs out past it
    for tier, cap in (("hbm", HBM), ("dram", DRAM), ("nvme", NVME)):
        assert found[tier]["dropped"] is True
        assert found[tier]["knee_tokens"] < cap < found[tier]["first_turned_tokens"], tier
    assert found["hbm"]["knee_tokens"] < found["dram"]["knee_tokens"] \
        < found["nvme"]["knee_tokens"]
    # past HBM the hits come from DRAM, and TTFT turns where HBM runs out
    assert knees["points"][2]["tier_hit_rates"]["dram"] > 0.9
    assert knees["ttft"]["knee_tokens"] == found["hbm"]["knee_tokens"]
    assert knees_run.observed["knee_tokens.hbm"] == found["hbm"]["knee_tokens"]
    assert knees_run.observed["knee_tokens.nvme"] == found["nvme"]["knee_tokens"]


def test_knee_min_tokens_gates_on_the_hbm_knee(knees_run: Any) -> None:
    hbm_knee = knees_run.knees["tiers"]["hbm"]["knee_tokens"]
    passed = find_knees(profile=PROFILE, profile_overrides=TIERS, overrides=SPILL,
                        knee_options=HALF_AND_DOUBLE, slo={"knee_min_tokens": hbm_knee})
    assert passed.verdict is not None and passed.verdict.passed
    with pytest.raises(SLOViolation, match="knee_min_tokens"):
        find_knees(profile=PROFILE, profile_overrides=TIERS, overrides=SPILL,
                   knee_options=HALF_AND_DOUBLE, slo={"knee_min_tokens": HBM}, check=True)


def test_knee_min_tokens_fails_with_the_reason_when_no_tier_figures(knees_run: Any) -> None:
    blind = dataclasses.replace(knees_run, server=None)
    for capacities in ({}, {"hbm": HBM}):
        r = knee_result("blind", KneeSpec(working_sets=(4096,), capacities=capacities),
                        [4096], [blind], parse_slo({"knee_min_tokens": 1000}, "blind"))
        assert r.verdict is not None and not r.verdict.passed
        (check,) = r.verdict.checks
        assert check.observed is None
        assert "no hit figures per tier" in (check.note or ""), capacities


def _p(ws: int, hbm: float, dram: float, ttft: float) -> dict[str, Any]:
    return {"working_set_tokens": ws, "tier_hit_rates": {"hbm": hbm, "dram": dram},
            "ttft_p95_ms": ttft}


def test_knee_rule_drop_below_share_of_plateau_and_ttft_rise() -> None:
    spec = KneeSpec(capacities={"hbm": 100, "dram": 1000}, drop_share=0.9, ttft_rise=2.0)
    points = [_p(25, 0.8, 0.0, 10), _p(50, 0.75, 0.0, 12), _p(200, 0.1, 0.7, 19),
              _p(2000, 0.0, 0.05, 30)]
    found = tier_knees(points, spec)
    # hbm: 0.75 >= 0.72 holds at 50; 0.1 drops at 200
    assert found["tiers"]["hbm"] == {"knee_tokens": 50, "first_turned_tokens": 200,
                                     "plateau": 0.8, "dropped": True}
    # dram counts hits from dram and faster tiers: 0.8 at 200 holds, 0.05 drops
    assert found["tiers"]["dram"]["knee_tokens"] == 200
    assert found["tiers"]["dram"]["first_turned_tokens"] == 2000
    # TTFT: 19 < 2 x 10 holds at 200, 30 rises at 2000
    assert found["ttft"]["knee_tokens"] == 200


def test_knee_rule_when_a_tier_never_runs_out_or_never_hits() -> None:
    spec = KneeSpec(capacities={"hbm": 100, "dram": 1000})
    found = tier_knees([_p(25, 0.0, 0.9, 10), _p(50, 0.0, 0.9, 10)], spec)
    assert found["tiers"]["hbm"]["knee_tokens"] is None
    assert "served no hits" in found["tiers"]["hbm"]["note"]
    assert found["tiers"]["dram"]["dropped"] is False
    assert found["tiers"]["dram"]["knee_tokens"] == 50
    assert "at least" in found["tiers"]["dram"]["note"]


def test_knee_search_points_from_capacities_or_given() -> None:
    assert KneeSpec(capacities={"hbm": 1000, "dram": 4000},
                    multiples=(0.5, 2.0)).points() == [250, 500, 2000, 8000]
    assert KneeSpec(working_sets=(300, 100, 300)).points() == [100, 300]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "a knee search needs a server or a simulator profile"),
    ({"profile": PROFILE, "knee_options": {"drop_share": 1.5}}, "drop_share: must be < 1"),
    ({"profile": PROFILE, "capacities": {"hbm": 0}},
     "capacities.hbm: must be a positive number of tokens"),
    ({"profile": PROFILE, "knee_options": {"bogus": 1}}, "bogus: unknown key"),
])
def test_knee_search_bad_input_names_the_key(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        find_knees(**kwargs)


def test_knee_search_needs_a_workload_with_a_working_set() -> None:
    with pytest.raises(ConfigError, match="find knees with tier_spill"):
        find_knees("chat", profile=PROFILE, working_sets=[1000])


def test_hbm_capacity_from_vllm_cache_config_info() -> None:
    snap = parse_metrics('vllm:cache_config_info{block_size="16",cache_dtype="auto",'
                         'num_gpu_blocks="2048"} 1.0\n')
    assert snap.block_size() == 16
    assert snap.gpu_capacity_tokens() == 32_768
    assert parse_metrics("vllm:num_requests_running 0\n").gpu_capacity_tokens() is None


def test_knees_in_result_json_and_html_report(knees_run: Any, tmp_path: Path) -> None:
    from pytest_ctxplat.report.result import write_json

    path = write_json(knees_run, tmp_path)
    doc = json.loads(path.read_text())
    assert doc["knees"]["tiers"]["dram"]["knee_tokens"] == \
        knees_run.knees["tiers"]["dram"]["knee_tokens"]
    assert len(doc["knees"]["points"]) == 5
    html = write_html_report(tmp_path, infer=False).read_text()
    assert "Where each tier runs out" in html
    assert "from nvme" in html
    if plots.missing() is None:
        assert 'data-file="spill_knees.png"' in html


def test_knee_min_tokens_on_a_plain_run_fails_saying_it_needs_a_knee_search() -> None:
    r = simulate("tier_spill", PROFILE, profile_overrides=TIERS,
                 overrides={**SPILL, "working_set_tokens": 8192},
                 slo={"knee_min_tokens": 1000})
    assert r.verdict is not None and not r.verdict.passed
    (check,) = r.verdict.checks
    assert "not a knee search" in check.note


def test_knee_search_against_a_server_sizes_points_from_cache_config_info() -> None:
    from pytest_ctxplat.servers.sim import start_sim

    sim = start_sim({"speedup": 50.0, "kv_capacity_tokens": 8192})
    try:
        r = find_knees(server=sim, overrides={"prefix_tokens": 1024},
                       knee_options={"multiples": [0.5, 2.0]},
                       slo={"knee_min_tokens": 2048})
    finally:
        sim.close()
    assert r.knees is not None
    assert r.knees["capacities"] == {"hbm": 8192}  # num_gpu_blocks x block_size
    assert [p["working_set_tokens"] for p in r.knees["points"]] == [2048, 4096, 16384]
    hbm = r.knees["tiers"]["hbm"]
    assert (hbm["knee_tokens"], hbm["first_turned_tokens"]) == (4096, 16384)
    assert r.verdict is not None and r.verdict.passed
