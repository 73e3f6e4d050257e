"""Baselines and the regression comparison as a library, and ``ctxplat compare``:
tolerances, the significance test, the power check, provenance and compatibility."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_ctxplat import simulate
from pytest_ctxplat.cli import main
from pytest_ctxplat.errors import ConfigError
from pytest_ctxplat.report.baseline import (
    BaselineError,
    available,
    check_compatible,
    compare_to_baseline,
    entry_from_result,
    git_commit,
    load_entry,
    save_entry,
    workload_hash,
)
from pytest_ctxplat.report.regression import (
    Comparison,
    Tolerance,
    compare,
    detectable_slowdown,
    parse_tolerances,
)
from pytest_ctxplat.report.result import write_json

WORKLOAD = {"users": 8, "max_requests": 200}


def _run(name: str = "test_x", **profile_overrides: Any) -> Any:
    return simulate("chat", "h100-llama8b", overrides=WORKLOAD, seed=0, name=name,
                    profile_overrides=profile_overrides)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("baselines")
    save_entry(directory, "v1", entry_from_result(_run()))
    return directory


def _entry(samples: list[float], p95: float) -> dict[str, Any]:
    return {"observed": {"e2e_ms.p95": p95}, "metrics": {},
            "samples": {"e2e_ms": samples, "errors": [0.0] * len(samples)}}


def test_baseline_index_and_entry_carry_provenance(release: Path) -> None:
    assert available(release) == ["v1"]
    index = json.loads((release / "v1" / "index.json").read_text())
    assert index["tests"] == {"test_x": "test_x.json"}
    entry = load_entry(release, "v1", "test_x")
    assert entry is not None
    prov = entry["provenance"]
    assert prov["engine"]["name"] == "ctxplat-sim" and prov["block_size"] == 16
    assert prov["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert prov["hardware"] == "h100" and prov["seed"] == 0
    assert len(entry["samples"]["ttft_ms"]) == 40
    assert not list((release / "v1").glob("*.tmp"))  # written atomically


def test_baseline_workload_hash_is_stable_and_order_free() -> None:
    a = workload_hash({"users": 2, "load": {"ramp_s": 1.0, "stages": ()}})
    assert a == workload_hash({"load": {"stages": [], "ramp_s": 1.0}, "users": 2})
    assert a != workload_hash({"users": 3, "load": {"ramp_s": 1.0, "stages": ()}})


def test_baseline_git_commit_outside_a_repository_is_none(tmp_path: Path) -> None:
    assert git_commit(tmp_path) is None
    assert git_commit(None) is None


def test_same_build_passes_its_baseline_and_a_real_slowdown_fails(release: Path) -> None:
    same = compare_to_baseline(_run(), release, "v1")
    assert same is not None and same.passed and not same.warnings
    slow = compare_to_baseline(_run(slowdown=1.3), release, "v1")
    assert slow is not None and not slow.passed
    table = slow.table()
    assert table.startswith("baseline 'v1' for test_x:")
    assert "server settings: slowdown unset -> 1.3" in table
    assert {"e2e_ms.p95", "decode_tps.p50"} <= {r.metric for r in slow.regressions}
    assert "power: smallest slowdown detectable" in table
    assert slow.to_dict()["status"] == "regression"
    assert Comparison.from_dict(slow.to_dict()).table() == table


def test_baseline_shift_past_tolerance_without_significance_is_noise() -> None:
    base = _entry([100.0, 300.0, 120.0, 280.0, 150.0, 260.0], 290.0)
    now = _entry([110.0, 290.0, 130.0, 270.0, 160.0, 340.0], 330.0)  # p95 +14%, overlapping
    result = compare(now, base)
    (row,) = result.rows
    assert row.verdict == "noise" and row.p_value is not None and row.p_value > 0.05
    assert result.passed
    shifted = _entry([x + 400 for x in base["samples"]["e2e_ms"]], 690.0)
    assert compare(shifted, base).rows[0].verdict == "REGRESSION"


def test_baseline_without_samples_is_judged_on_the_tolerance_alone() -> None:
    base = {"observed": {"hit_rate.server": 0.80}, "metrics": {}}
    assert compare({"observed": {"hit_rate.server": 0.79}, "metrics": {}}, base).passed
    worse = compare({"observed": {"hit_rate.server": 0.70}, "metrics": {}}, base)
    assert worse.rows[0].verdict == "REGRESSION" and worse.rows[0].p_value is None


@pytest.mark.parametrize(("text", "family", "expected"), [
    ("+15%", "latency", Tolerance(0.15, True, "max")),
    ("-5%", "latency", Tolerance(0.05, True, "min")),
    ("10%", "speed", Tolerance(0.10, True, "min")),
    (0.03, "hit_rate", Tolerance(0.03, False, "min")),
    ("+0.01", "error_rate", Tolerance(0.01, False, "max")),
])
def test_baseline_tolerance_forms(text: Any, family: str, expected: Tolerance) -> None:
    assert Tolerance.parse(text, family) == expected


def test_baseline_tolerance_overrides_per_metric_and_family() -> None:
    base = _entry([100.0] * 5 + [110.0] * 5, 110.0)
    now = _entry([120.0] * 5 + [132.0] * 5, 132.0)  # +20%
    assert not compare(now, base).passed
    assert compare(now, base, tolerances={"e2e_ms_p95": "+25%"}).passed
    assert compare(now, base, tolerances={"latency": "+25%"}).passed
    with pytest.raises(ConfigError, match="here: ttft_p95: unknown tolerance key; valid: "
                                          "ttft_ms_p50"):
        parse_tolerances({"ttft_p95": "+1%"}, "here")
    with pytest.raises(ConfigError, match="here: latency: must be a finite amount >= 0"):
        parse_tolerances({"latency": "+-5%"}, "here")


def test_baseline_power_check_shrinks_with_more_samples() -> None:
    few = detectable_slowdown([100.0, 200.0, 150.0], [110.0, 190.0, 160.0])
    many = detectable_slowdown([100.0, 200.0, 150.0] * 30, [110.0, 190.0, 160.0] * 30)
    assert few is not None and many is not None and 0 < many < few
    assert detectable_slowdown([1.0, 2.0], [1.0, 2.0, 3.0]) is None


def test_incompatible_baseline_is_refused_naming_each_difference() -> None:
    base = {"workload_hash": "ab12", "model": "m", "block_size": 16, "hardware": "h100"}
    now = {"workload_hash": "cd34", "model": "m", "block_size": 64, "hardware": "h200"}
    with pytest.raises(BaselineError, match=r"baseline 'v1.4' for test_x: workload differs "
                                            r"\(hash ab12 vs cd34\), block_size differs "
                                            r"\(16 vs 64\)"):
        check_compatible(base, now, "v1.4", "test_x")
    warnings = check_compatible(base, {**base, "hardware": "h200"}, "v1.4", "test_x")
    assert warnings == ["hardware: baseline h100, now h200"]


def test_unknown_baseline_names_the_available_ones(release: Path) -> None:
    with pytest.raises(BaselineError, match=r"unknown baseline 'v2' in .*; available: v1"):
        compare_to_baseline(_run(), release, "v2")
    with pytest.raises(BaselineError, match=r"baseline name '\.\./x'"):
        save_entry(release, "../x", {})
    assert compare_to_baseline(_run(name="test_other"), release, "v1") is None


def test_ctxplat_compare_against_a_baseline_exit_codes(release: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    same = write_json(_run(), tmp_path / "same")
    slow = write_json(_run(slowdown=1.3), tmp_path / "slow")
    assert main(["compare", str(release / "v1"), str(same)]) == 0
    assert main(["compare", str(release / "v1"), str(tmp_path / "slow")]) == 1
    out = capsys.readouterr().out
    assert "baseline 'v1' for test_x: " in out and "REGRESSION" in out
    assert main(["compare", str(same), str(slow), "--tolerance", "latency=+50%",
                 "--tolerance", "speed=-50%"]) == 0
    assert main(["compare", str(release / "v1"), str(same), "--test", "nothing"]) == 2
    assert main(["compare", str(tmp_path / "missing"), str(same)]) == 2
    err = capsys.readouterr().err
    assert "no test to compare" in err and "missing: no such file or directory" in err


def test_baseline_entry_is_found_when_a_parallel_save_lost_its_index_update(
        tmp_path: Path) -> None:
    entry = entry_from_result(_run(name="test_a"))
    save_entry(tmp_path, "v1", entry)
    save_entry(tmp_path, "v1", {**entry, "test": "test_b"})
    index_path = tmp_path / "v1" / "index.json"
    index = json.loads(index_path.read_text())
    del index["tests"]["test_b"]  # what a concurrent writer's stale index leaves
    index_path.write_text(json.dumps(index))
    found = load_entry(tmp_path, "v1", "test_b")
    assert found is not None and found["test"] == "test_b"
    assert load_entry(tmp_path, "v1", "test_c") is None


def test_baseline_other_figures_are_judged_in_their_likely_direction() -> None:
    base = {"observed": {"capacity.max_users": 40.0, "hit_rate.designed_ttl_300s": 0.8,
                         "queue_depth": 10.0}, "metrics": {}}
    better = {"observed": {"capacity.max_users": 60.0, "hit_rate.designed_ttl_300s": 0.81,
                           "queue_depth": 10.5}, "metrics": {}}
    verdicts = {r.metric: r.verdict for r in compare(better, base).rows}
    assert verdicts == {"capacity.max_users": "improved", "hit_rate.designed_ttl_300s": "ok",
                        "queue_depth": "ok"}
    worse = {"observed": {"capacity.max_users": 30.0, "hit_rate.designed_ttl_300s": 0.7,
                          "queue_depth": 13.0}, "metrics": {}}
    assert {r.metric for r in compare(worse, base).regressions} == {
        "capacity.max_users", "hit_rate.designed_ttl_300s", "queue_depth"}


def test_baseline_compares_tier_session_and_knee_figures_in_their_direction() -> None:
    from pytest_ctxplat.report.regression import _SKIPPED, _family

    assert _family("hit_rate_gap.lt_30s") == "hit_rate"  # lower is worse
    assert _family("tier_hit_rate.dram") == "hit_rate"
    assert _family("external_hit_rate") == "hit_rate"
    assert _family("knee_tokens.hbm") == "speed"  # a smaller knee is worse
    assert _family("session_s.p95") == "latency" and _family("ttft_hit_ms.p95") == "latency"
    # only the p95 of a session-level distribution is compared, not its max or mean
    assert _SKIPPED.match("session_s.max") and _SKIPPED.match("ttft_miss_ms.mean")
