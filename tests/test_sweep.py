"""Sweeps: one workload per load point (users or arrival rates), the curve in the
result, the largest passing point as capacity; the ``sweep`` marker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_ctxplat.api import simulate, sweep
from pytest_ctxplat.errors import ConfigError, SLOViolation
from pytest_ctxplat.orchestrator.sweep import SweepSpec, sweep_spec

pytest_plugins = ["pytester"]

PROFILE = "h100-llama8b-dram"
STEADY = {"duration_s": 60}  # chat-steady: 6-turn sessions recycled
SLO = {"ttft_p95_ms": 500}
POINT_KEYS = {"users", "profile", "requests", "output_tokens_per_s", "ttft_p95_ms",
              "decode_tps_p50", "hit_rate_designed", "hit_rate_request",
              "hit_rate_server", "verdict", "failed"}


def test_sweep_users_gives_the_curve_and_the_largest_passing_point(tmp_path: Path) -> None:
    result = sweep("chat-steady", profile=PROFILE, users=[4, 16, 32, 64], overrides=STEADY,
                   slo=SLO, name="steady-sweep", results_dir=tmp_path)
    assert result.sweep is not None
    points = list(result.sweep)
    assert [p["users"] for p in points] == [4, 16, 32, 64]
    assert set(points[0]) == POINT_KEYS
    tps = [p["output_tokens_per_s"] for p in points]
    assert tps == sorted(tps)  # more users, more tokens/s on this server
    ttft = [p["ttft_p95_ms"] for p in points]
    assert ttft == sorted(ttft)
    verdicts = [p["verdict"] for p in points]
    # a few requests at 4 users may not bound the p95: inconclusive, passing under 'warn'
    assert verdicts[0] in ("pass", "inconclusive") and verdicts[-1] == "fail"
    assert points[-1]["failed"] == ["ttft_p95_ms"]
    best = max(p["users"] for p in points if p["verdict"] != "fail")
    cap = result.capacity
    assert cap is not None and cap["sustained_users"] == best
    assert cap["interval"]["highest_passed"] == best
    assert cap["interval"]["lowest_failed"] == min(
        p["users"] for p in points if p["verdict"] == "fail" and p["users"] > best)
    # the result's own figures are those of the largest passing point
    assert result.workload["users"] == best and result.name == "steady-sweep"
    assert result.verdict is not None and result.verdict.passed
    doc = json.loads((tmp_path / "steady-sweep.json").read_text())
    assert [p["users"] for p in doc["sweep"]] == [4, 16, 32, 64]
    assert doc["observed"]["capacity.sustained_users"] == best
    assert len(list(tmp_path.glob("*.json"))) == 1  # the points are not separate runs


def test_sweep_point_is_the_run_it_stands_for() -> None:
    result = sweep("chat-steady", profile=PROFILE, users=[8], overrides=STEADY, slo=SLO,
                   name="one")
    alone = simulate("chat-steady", PROFILE, overrides={**STEADY, "users": 8}, slo=SLO,
                     name="one[users=8]")
    assert result.sweep is not None
    (point,) = result.sweep
    assert point["requests"] == alone.metrics["requests"]
    assert point["ttft_p95_ms"] == alone.observed["ttft_ms.p95"]


def test_sweep_capacity_gate_passes_and_fails() -> None:
    kwargs = {"profile": PROFILE, "users": [4, 16, 64], "overrides": STEADY}
    met = sweep("chat-steady", slo={**SLO, "min_sustained_users": 16}, **kwargs)
    assert met.verdict is not None and met.verdict.passed
    missed = sweep("chat-steady", slo={**SLO, "min_sustained_users": 32}, **kwargs)
    assert missed.verdict is not None and not missed.verdict.passed
    (check,) = missed.verdict.failed
    assert check.key == "min_sustained_users" and check.observed == 16
    with pytest.raises(SLOViolation, match="min_sustained_users"):
        sweep("chat-steady", slo={**SLO, "min_sustained_users": 32}, check=True, **kwargs)


def test_sweep_with_no_passing_point_has_zero_capacity() -> None:
    result = sweep("chat-steady", profile=PROFILE, users=[32, 64], overrides=STEADY,
                   slo={"ttft_p95_ms": 100, "min_sustained_users": 1})
    assert result.capacity is not None and result.capacity["sustained_users"] == 0
    assert result.capacity["interval"] == {"highest_passed": None, "lowest_failed": 32}
    assert result.verdict is not None and not result.verdict.passed
    assert result.workload["users"] == 32  # the first point's figures


def test_sweep_rates_open_loop() -> None:
    result = sweep("chat-steady", profile=PROFILE, rates=[0.5, 2, 8], overrides=STEADY,
                   slo={**SLO, "min_sustained_users": 1})
    assert result.sweep is not None
    assert [p["rate_per_s"] for p in result.sweep] == [0.5, 2, 8]
    assert [p["verdict"] for p in result.sweep] == ["pass", "pass", "fail"]
    assert result.capacity is not None and result.capacity["sustained_rate_per_s"] == 2
    assert result.observed["capacity.sustained_rate_per_s"] == 2
    assert result.workload["load"]["arrival"] == "poisson"
    assert result.verdict is not None
    (check,) = result.verdict.failed  # a rate sweep does not measure users
    assert check.key == "min_sustained_users" and "rate" in check.note


def test_sweep_spec_needs_one_kind_of_points() -> None:
    with pytest.raises(ConfigError, match="t::x: sweep: users: give the points as"):
        sweep_spec({}, "t::x: sweep")
    with pytest.raises(ConfigError, match="users: give the points"):
        sweep_spec({"users": [1], "rates": [1.0]}, "t::x: sweep")
    with pytest.raises(ConfigError, match="t::x: sweep: users: must be > 0, got 0"):
        sweep_spec({"users": [1, 0]}, "t::x: sweep")
    assert sweep_spec({"users": 4}, "t").points == (4,)
    assert SweepSpec(rates=(1.5,)).variable == "rate_per_s"


def test_sweep_of_users_refuses_a_load_that_sets_users_itself() -> None:
    with pytest.raises(ConfigError, match="remove them or sweep rates"):
        sweep("chat", profile=PROFILE, users=[1, 2],
              overrides={"load": {"controller": {"max_users": 4}}})
    with pytest.raises(ConfigError, match="a server or a simulator profile"):
        sweep("chat", users=[1])


SWEEP_TEST = """
import pytest

@pytest.mark.slo(ttft_p95_ms=5000, min_sustained_users=2)
@pytest.mark.sweep(users=[1, 2, 3])
@pytest.mark.workload("chat", users=2, turns=2, think_time_s=0.1, start_spread_s=0,
                      system_prompt_tokens=256, user_tokens=32, output_tokens=8,
                      block_size=16)
def test_sweep(ctxplat_run):
    result = ctxplat_run()
    assert [p["users"] for p in result.sweep] == [1, 2, 3]
"""


def test_sweep_marker_runs_the_workload_once_per_point(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(SWEEP_TEST)
    result = pytester.runpytest("--ctxplat-sim-speedup=20", "--ctxplat-timing-skew-max-ms=inf",
                                "-p", "no:cacheprovider",
                                "--junitxml=junit.xml")
    result.assert_outcomes(passed=1)
    (path,) = (pytester.path / "ctxplat-results").glob("*.json")
    doc = json.loads(path.read_text())
    assert [p["requests"] for p in doc["sweep"]] == [2, 4, 6]
    assert doc["capacity"]["sustained_users"] == 3
    assert 'name="ctxplat.capacity_sustained_users" value="3"' in \
        (pytester.path / "junit.xml").read_text()


def test_sweep_marker_errors_before_any_server_starts(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile("""
import pytest

@pytest.mark.sweep(user=[1, 2])
def test_bad(ctxplat_run):
    ctxplat_run()
""")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_bad: sweep: user: unknown key; valid: rates, users*"])
