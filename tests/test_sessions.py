"""Session-level objectives of agentic workloads: turns that hit versus miss, hit rate by
the gap before a turn, session completion time and subagent fan-out latency."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest

from pytest_ctxplat.api import simulate, write_html_report
from pytest_ctxplat.driver.controller import window_spec
from pytest_ctxplat.errors import ConfigError
from pytest_ctxplat.report import sessions
from pytest_ctxplat.report.records import RequestRecord
from pytest_ctxplat.report.result import RunResult
from pytest_ctxplat.slo import GAP_BUCKET_NAMES, SLOSpec, evaluate, parse_slo

# coding agents whose pauses run from seconds (tool calls) to many minutes (humans),
# against a simulator whose HBM forgets blocks unused for 60 s
# contexts capped near the old default's 110k, so that six sessions' KV fits the
# simulated HBM: the control below needs a cache that keeps every block
CODING = {"users": 6, "duration_s": 3600, "max_context_tokens": 100_000}
TTL_S = 60.0
SWARM = {"users": 4, "duration_s": 600, "spawn_probability": 0.5, "load": {"ramp_s": 0}}


def _rec(session: str, index: int, start: float, end: float, *, prompt: int = 1000,
         cached: int | None = None, designed: int = 0, ttft: float = 0.1,
         outcome: str = "ok", gap: float | None = None, parent: str | None = None,
         spawned: float | None = None) -> RequestRecord:
    return RequestRecord(session_id=session, user=0, index=index, prompt_tokens=prompt,
                         max_tokens=8, designed_cached_tokens=designed, start_s=start,
                         ttft_s=ttft, end_s=end, cached_tokens=cached, outcome=outcome,
                         gap_s=gap, parent_session_id=parent, spawned_s=spawned)


def test_a_turn_hits_on_reported_cached_tokens_else_on_the_designed_ones() -> None:
    reported_miss = _rec("a", 0, 0, 1, cached=100, designed=900)
    designed_hit = _rec("a", 1, 2, 3, cached=None, designed=900)
    half = _rec("a", 2, 4, 5, cached=500)
    assert sessions.cached_share(reported_miss) == pytest.approx(0.1)
    assert sessions.cached_share(designed_hit) == pytest.approx(0.9)
    values = sessions.session_samples([[reported_miss, designed_hit, half]])
    assert values["ttft_hit_ms"].size == 2  # 90% designed and exactly 50% reported
    assert values["ttft_miss_ms"].size == 1


def test_gap_buckets_split_tool_calls_from_human_pauses() -> None:
    assert [n for n, _, _ in sessions.GAP_BUCKETS] == list(GAP_BUCKET_NAMES)
    assert sessions.gap_bucket(0.0) == sessions.gap_bucket(29.9) == "lt_30s"
    assert sessions.gap_bucket(30.0) == sessions.gap_bucket(299.0) == "30s_5m"
    assert sessions.gap_bucket(300.0) == sessions.gap_bucket(86400.0) == "gt_5m"
    records = [_rec("a", 0, 0, 1, cached=0), _rec("a", 1, 10, 11, cached=900, gap=9.0),
               _rec("a", 2, 411, 412, cached=100, gap=400.0)]
    section = sessions.section([records])
    gaps = section["hit_rate_gap"]
    assert gaps["lt_30s"] == {"turns": 1, "hit_turns": 1, "hit_rate": pytest.approx(0.9)}
    assert gaps["gt_5m"] == {"turns": 1, "hit_turns": 0, "hit_rate": pytest.approx(0.1)}
    assert gaps["30s_5m"]["hit_rate"] is None  # the first turn has no gap: not counted
    assert sessions.notes(section)["hit_rate_gap.30s_5m"].startswith("no successful turn")


def test_session_and_fanout_times_per_run_from_the_records() -> None:
    run = [_rec("p", 0, 0.0, 1.0),
           _rec("c1", 0, 1.5, 3.0, parent="p", spawned=1.5),
           _rec("c2", 0, 1.5, 2.0, parent="p", spawned=1.5),
           _rec("c2", 1, 2.1, 4.0, parent="p", spawned=1.5, gap=0.1),
           _rec("p", 2, 4.5, 7.0, gap=0.5),
           _rec("failed", 0, 0.0, 9.0, outcome="timeout")]
    values = sessions.session_samples([run])
    assert sorted(values["session_s"].tolist()) == pytest.approx([1.5, 2.5, 7.0])
    assert values["fanout_ms"].tolist() == pytest.approx([2500.0])  # spawn to c2's end
    # a session cut short by the run's bound (no last turn) is not a completed session
    cut = [_rec("x", 0, 0.0, 1.0), _rec("x", 1, 2.0, 3.0, gap=1.0)]
    cut[0].last_turn = cut[1].last_turn = False
    assert sessions.session_samples([cut])["session_s"].size == 0
    cut[1].last_turn = True
    assert sessions.session_samples([cut])["session_s"].tolist() == [3.0]
    # a repeated run reuses session ids: its sessions are not merged with the first run's
    later = [_rec(r.session_id, r.index, r.start_s + 100, (r.end_s or 0) + 100,
                  outcome=r.outcome or "ok", parent=r.parent_session_id,
                  spawned=None if r.spawned_s is None else r.spawned_s + 100) for r in run]
    pooled = sessions.session_samples([run, later])
    assert sorted(pooled["session_s"].tolist()) == pytest.approx([1.5, 1.5, 2.5, 2.5, 7, 7])
    assert pooled["fanout_ms"].tolist() == pytest.approx([2500.0, 2500.0])


@pytest.mark.parametrize(("value", "match"), [
    ({"lt_5s": 0.5}, r"hit_rate_gap_min: unknown gap bucket 'lt_5s'; "
                     r"valid: lt_30s, 30s_5m, gt_5m"),
    ({"gt_5m": 1.5}, r"hit_rate_gap_min.gt_5m: must be a number from 0 to 1, got 1.5"),
    ({}, "hit_rate_gap_min: must name at least one gap bucket"),
    (0.5, "hit_rate_gap_min: must be a mapping"),
])
def test_bad_gap_objectives_name_the_key_and_the_buckets(value: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_slo({"hit_rate_gap_min": value}, "test_mod.py::test_x")


def test_each_gap_bucket_is_its_own_objective() -> None:
    spec = parse_slo({"hit_rate_gap_min": {"lt_30s": 0.8, "gt_5m": 0.2},
                      "session_p95_s": 600}, "t")
    assert spec.objectives() == {"session_p95_s": 600.0, "hit_rate_gap_min.lt_30s": 0.8,
                                 "hit_rate_gap_min.gt_5m": 0.2}
    verdict = evaluate(spec, {"hit_rate_gap.lt_30s": 0.9, "hit_rate_gap.gt_5m": 0.1,
                              "session_s.p95": 700.0})
    by_key = {c.key: c for c in verdict.checks}
    assert by_key["hit_rate_gap_min.lt_30s"].metric == "hit_rate_gap.lt_30s"
    assert by_key["hit_rate_gap_min.lt_30s"].passed
    assert not by_key["hit_rate_gap_min.gt_5m"].passed
    assert not by_key["session_p95_s"].passed
    assert spec.to_dict()["hit_rate_gap_min"] == {"lt_30s": 0.8, "gt_5m": 0.2}


def test_the_capacity_controller_leaves_session_objectives_to_the_whole_run() -> None:
    spec = SLOSpec(ttft_p95_ms=500, min_sustained_users=2, session_p95_s=60,
                   hit_rate_gap_min={"lt_30s": 0.5})
    window = window_spec(spec)
    assert window.objectives() == {"ttft_p95_ms": 500.0}


@pytest.fixture(scope="module")
def coding(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, Path]:
    results = tmp_path_factory.mktemp("sessions")
    slo = {"warmup_s": 0, "ttft_hit_p95_ms": 60_000, "ttft_miss_p95_ms": 0.001,
           "hit_rate_gap_min": {"lt_30s": 0.5, "gt_5m": 0.9}, "fanout_p95_ms": 1000}
    result = simulate("coding-agent", "h100-llama8b", overrides=CODING,
                      profile_overrides={"tiers.0.ttl_s": TTL_S}, slo=slo,
                      results_dir=results, name="coding with ttl")
    assert result.metrics["errors"] == 0, result.errors_sample
    return result, results


def test_the_runner_records_the_gap_before_each_turn(coding: tuple[RunResult, Path]) -> None:
    result, _ = coding
    by_session: dict[str, list[RequestRecord]] = {}
    for r in result.records:
        by_session.setdefault(r.session_id, []).append(r)
    for recs in by_session.values():
        recs.sort(key=lambda r: r.start_s)
        assert recs[0].gap_s is None
        for prev, cur in itertools.pairwise(recs):
            assert prev.end_s is not None and cur.gap_s is not None
            assert cur.gap_s == pytest.approx(cur.start_s - prev.end_s, abs=1e-6)
    gaps = [r.gap_s for r in result.records if r.gap_s is not None]
    assert min(gaps) < 30 and max(gaps) > 300  # tool calls and human pauses both occur


def test_turns_that_hit_are_faster_and_short_gaps_hit_more_past_a_ttl(
        coding: tuple[RunResult, Path]) -> None:
    result, _ = coding
    sec = result.sessions
    assert sec is not None
    assert sec["ttft_hit_ms"]["count"] > 20 and sec["ttft_miss_ms"]["count"] > 3
    assert sec["ttft_hit_ms"]["p50"] * 3 < sec["ttft_miss_ms"]["p50"]
    gaps = sec["hit_rate_gap"]
    assert gaps["lt_30s"]["turns"] > 20 and gaps["gt_5m"]["turns"] > 0
    # blocks unused for longer than the TTL are gone: a turn after a human pause misses
    assert gaps["lt_30s"]["hit_rate"] > 0.8
    assert gaps["gt_5m"]["hit_rate"] < 0.3
    assert gaps["30s_5m"]["hit_rate"] < gaps["lt_30s"]["hit_rate"]
    # sessions still running at the bound are not complete: they are left out
    complete = {r.session_id for r in result.records if r.last_turn}
    assert sec["session_s"]["count"] == len(complete) >= 2
    assert len(complete) < len({r.session_id for r in result.records})
    assert sec["fanout_ms"] is None  # coding agents spawn no subagents


def test_long_gaps_hit_without_a_ttl() -> None:
    """The control for the TTL test: the same sessions on a cache that keeps blocks."""
    result = simulate("coding-agent", "h100-llama8b", overrides=CODING)
    gaps = result.sessions["hit_rate_gap"] if result.sessions else {}
    assert gaps["gt_5m"]["turns"] > 0 and gaps["gt_5m"]["hit_rate"] > 0.8


def test_session_objectives_pass_and_fail_with_reasons(coding: tuple[RunResult, Path]
                                                       ) -> None:
    result, _ = coding
    assert result.verdict is not None
    checks = {c.key: c for c in result.verdict.checks}
    assert checks["ttft_hit_p95_ms"].status == "pass"
    assert checks["ttft_hit_p95_ms"].interval is not None  # judged on its interval
    assert checks["ttft_miss_p95_ms"].status == "fail"
    assert checks["hit_rate_gap_min.lt_30s"].status == "pass"
    assert checks["hit_rate_gap_min.gt_5m"].status == "fail"
    assert checks["fanout_p95_ms"].status == "fail"
    assert "no subagent fan-out" in checks["fanout_p95_ms"].note
    assert not result.passed


def test_sessions_are_in_the_json_and_the_html_report(coding: tuple[RunResult, Path],
                                                      tmp_path: Path) -> None:
    result, results = coding
    doc = orjson.loads(next(results.glob("*.json")).read_bytes())
    assert result.sessions is not None
    assert doc["sessions"]["hit_rate_gap"] == result.sessions["hit_rate_gap"]
    assert doc["observed"]["ttft_hit_ms.p95"] == pytest.approx(
        doc["sessions"]["ttft_hit_ms"]["p95"])
    assert any(r["gap_s"] is not None for r in doc["records"])
    html = write_html_report(results, tmp_path / "report.html", infer=False).read_text()
    assert "<h3>Sessions</h3>" in html
    assert "TTFT of turns that hit (ms)" in html and "gt_5m" in html


def test_a_swarm_reports_its_fanout_latency() -> None:
    ok = simulate("agent-swarm", "h100-llama8b", overrides=SWARM,
                  slo={"warmup_s": 0, "fanout_p95_ms": 3_600_000, "session_p95_s": 3600})
    sec = ok.sessions
    assert sec is not None and sec["fanout_ms"] is not None
    assert sec["fanout_ms"]["count"] >= 1
    children = [r for r in ok.records if r.parent_session_id is not None]
    assert children and all(r.spawned_s is not None and r.start_s >= r.spawned_s
                            for r in children)
    longest_child = max((r.end_s or 0) - (r.spawned_s or 0) for r in children
                        if r.ok and r.end_s is not None)
    assert 0 < sec["fanout_ms"]["max"] <= longest_child * 1000 + 1e-6
    assert ok.verdict is not None and ok.verdict.passed
    tight = simulate("agent-swarm", "h100-llama8b", overrides=SWARM,
                     slo={"warmup_s": 0, "fanout_p95_ms": 1})
    assert tight.verdict is not None and tight.verdict.status == "fail"


def test_a_bad_gap_bucket_in_the_marker_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.slo(hit_rate_gap_min={"lt_1m": 0.5})
        def test_x(ctxplat_run):
            ctxplat_run()
    """)
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*::test_x: hit_rate_gap_min: unknown gap bucket 'lt_1m'; "
                                 "valid: lt_30s, 30s_5m, gt_5m*"])


def test_gap_objectives_from_the_command_line() -> None:
    from pytest_ctxplat.cli.common import parse_assignments

    values = parse_assignments(["hit_rate_gap_min={lt_30s: 0.8, gt_5m: 0.2}"], "--slo")
    spec = parse_slo(values, "--slo")
    assert spec.hit_rate_gap_min == {"lt_30s": 0.8, "gt_5m": 0.2}
