"""The HTML report's throughput-against-users chart: a line only through runs of one
workload and server profile, one per sweep, a point per capacity run; SLO margins in
percent; the capacity and sweep sections of a run."""

from __future__ import annotations

from typing import Any

from pytest_ctxplat.report import plots
from pytest_ctxplat.report.html import build_report

PNG = b"\x89PNG\r\n\x1a\n"


def _run(name: str, users: int, tps: float, *, kind: str = "chat", profile: str = "sim",
         **workload: Any) -> dict[str, Any]:
    return {"schema_version": 1, "name": name, "records": [],
            "target": {"profile": profile, "launcher": "sim"},
            "workload": {"kind": kind, "users": users, "turns": 4, **workload},
            "metrics": {"output_tokens_per_s": tps, "requests": 10}}


def _example_session() -> list[dict[str, Any]]:
    """Runs like the example tests leave: quick start, more users with fewer turns,
    a deliberate breach, a swarm; none of them a sweep."""
    return [_run("test_quickstart", 8, 300.0),
            _run("test_more_users", 16, 500.0, turns=3),
            _run("test_breach", 2, 90.0, turns=2),
            _run("test_swarm", 32, 900.0, kind="agent_swarm")]


def test_sweep_chart_joins_no_runs_of_different_workloads() -> None:
    series = plots.throughput_curves(_example_session())
    assert len(series) == 4
    assert all(len(s["points"]) == 1 and s["kind"] == "runs" for s in series)
    labels = [s["label"] for s in series]
    assert len(set(labels)) == 4  # three chat shapes, each named by its first run
    assert "agent_swarm on sim" in labels
    assert "chat on sim (test_quickstart)" in labels


def test_sweep_chart_joins_runs_of_one_workload_and_profile_only() -> None:
    runs = [_run("a", 4, 200.0), _run("b", 2, 110.0), _run("c", 8, 350.0),
            _run("d", 4, 150.0, profile="vllm-cpu"), _run("e", 8, 250.0, profile="vllm-cpu")]
    series = {s["label"]: s["points"] for s in plots.throughput_curves(runs)}
    assert series == {"chat on sim": [(2.0, 110.0), (4.0, 200.0), (8.0, 350.0)],
                      "chat on vllm-cpu": [(4.0, 150.0), (8.0, 250.0)]}


def test_sweep_and_capacity_runs_draw_their_own_series() -> None:
    swept = _run("test_sweep", 16, 500.0)
    swept["sweep"] = [{"users": u, "output_tokens_per_s": t, "verdict": v}
                      for u, t, v in ((4, 170.0, "pass"), (16, 500.0, "pass"),
                                      (64, 1400.0, "fail"))]
    swept["capacity"] = {"sustained_users": 16, "interval": {"highest_passed": 16,
                                                             "lowest_failed": 64},
                         "stop_reason": "sweep", "output_tokens_per_s": 500.0}
    governed = _run("test_capacity", 64, 600.0)
    governed["capacity"] = {"sustained_users": 14, "output_tokens_per_s": 610.0,
                            "interval": {"highest_passed": 14, "lowest_failed": 15},
                            "stop_reason": "converged",
                            "trajectory": [{"t": 50.0, "active_users": 1,
                                            "ttft_p95_ms": 20.0,
                                            "output_tokens_per_s": 40.0,
                                            "decision": "grow"}]}
    runs = [*_example_session(), swept, governed]
    series = plots.throughput_curves(runs)
    by_kind = {s["kind"]: s for s in series if s["kind"] != "runs"}
    assert by_kind["sweep"]["points"] == [(4.0, 170.0), (16.0, 500.0), (64.0, 1400.0)]
    assert by_kind["sweep"]["label"] == "sweep test_sweep on sim"
    assert by_kind["capacity"]["points"] == [(14.0, 610.0)]
    assert plots.throughput_vs_users(runs)[:8] == PNG
    text = build_report(runs)
    assert "sweep test_sweep on sim" in text and "4 users: 170, 16 users: 500" in text
    assert "Capacity at the SLO" in text and "converged" in text
    assert '<table class="sweep">' in text and '<table class="trajectory">' in text


def test_sweep_report_shows_margins_in_percent_like_the_terminal() -> None:
    run = _run("test_quickstart", 8, 300.0)
    run["verdict"] = {"passed": False, "checks": [
        {"key": "ttft_p95_ms", "metric": "ttft_ms.p95", "direction": "max",
         "target": 500.0, "observed": 313.6, "passed": True, "margin": 0.3728},
        {"key": "decode_tps_p10", "metric": "decode_tps.p10", "direction": "min",
         "target": 30.0, "observed": 24.0, "passed": False, "margin": -0.2}]}
    text = build_report([run])
    assert "<td>+37.3%</td>" in text and "<td>-20.0%</td>" in text
