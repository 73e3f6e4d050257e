"""Measurement windows, effective TTFT, per-period judgment and repeated runs (in
virtual time on the in-process simulator)."""

from __future__ import annotations

import pytest

from pytest_ctxplat.api import simulate
from pytest_ctxplat.report.records import RequestRecord
from pytest_ctxplat.report.window import WARMUP_CAP_S, measurement_window
from pytest_ctxplat.runtime import properties

PROFILE = "h100-llama8b-dram"
SMALL = {"users": 4, "turns": 3, "think_time_s": 0.5, "system_prompt_tokens": 512,
         "user_tokens": 64, "output_tokens": 16, "block_size": 16}


def _rec(i: int, start: float, end: float | None, outcome: str | None = "ok"
         ) -> RequestRecord:
    return RequestRecord(session_id=f"s{i}", user=0, index=i, prompt_tokens=10, max_tokens=4,
                         start_s=start, ttft_s=0.1, end_s=end, outcome=outcome)


def test_time_bounded_run_leaves_out_warmup_and_requests_in_flight_at_the_bound() -> None:
    recs = [_rec(0, 1.0, 2.0), _rec(1, 12.0, 14.0), _rec(2, 50.0, 60.0), _rec(3, 95.0, 103.0),
            _rec(4, 99.0, None, "cancelled")]
    kept, w = measurement_window(recs, bound_s=100.0, warmup_s=None, warmup_requests=0,
                                 cooldown_s=None)
    assert [r.index for r in kept] == [1, 2]
    assert w.warmup_s == 10.0  # 10% of 100 s
    assert (w.excluded_warmup, w.excluded_cooldown, w.judged) == (1, 1, 2)
    long_run = measurement_window(recs, bound_s=3600.0, warmup_s=None, warmup_requests=0,
                                  cooldown_s=None)[1]
    assert long_run.warmup_s == WARMUP_CAP_S


def test_request_bounded_run_is_judged_whole_by_default() -> None:
    recs = [_rec(i, float(i), i + 5.0) for i in range(10)]
    kept, w = measurement_window(recs, bound_s=None, warmup_s=None, warmup_requests=0,
                                 cooldown_s=None)
    assert len(kept) == 10 and w.excluded_warmup == w.excluded_cooldown == 0


def test_explicit_warmup_requests_and_cooldown() -> None:
    recs = [_rec(i, float(i), i + 0.5) for i in range(10)]
    kept, w = measurement_window(recs, bound_s=None, warmup_s=0.0, warmup_requests=3,
                                 cooldown_s=2.0)
    # the first 3 by start time; those started in the last 2 s before the last start
    assert [r.index for r in kept] == [3, 4, 5, 6]
    assert (w.excluded_warmup, w.excluded_cooldown) == (3, 3)


def test_effective_ttft_adds_client_side_queueing() -> None:
    rec = _rec(0, 3.0, 4.0)
    rec.scheduled_s = 2.5
    assert rec.queue_s == pytest.approx(0.5)
    assert rec.effective_ttft_s == pytest.approx(0.6)
    unknown = _rec(1, 3.0, 4.0)
    assert unknown.effective_ttft_s == unknown.ttft_s
    assert rec.to_dict()["scheduled_s"] == 2.5


def test_open_loop_concurrency_limit_shows_in_effective_ttft() -> None:
    r = simulate("chat", PROFILE, overrides={
        **SMALL, "users": 40, "turns": 1, "duration_s": 20,
        "load": {"arrival": "poisson", "rate_per_s": 10, "max_concurrency": 2}},
        slo={"effective_ttft_p95_ms": 1000, "ttft_p50_ms": 1000})
    assert r.observed["effective_ttft_ms.p95"] > 10 * r.observed["ttft_ms.p95"]
    by_key = {c.key: c for c in r.verdict.checks}
    assert by_key["effective_ttft_p95_ms"].status == "fail"
    assert by_key["ttft_p50_ms"].status == "pass"


def test_token_budget_waits_count_as_queueing() -> None:
    r = simulate("chat", PROFILE, overrides={**SMALL, "turns": 6, "load": {"input_tpm": 2000}})
    queued = [rec for rec in r.records if rec.queue_s > 1.0]
    assert queued and all(rec.effective_ttft_s > rec.ttft_s + 1.0 for rec in queued)
    assert r.metrics["effective_ttft_ms"]["max"] > 1000 > r.metrics["ttft_ms"]["max"]


def test_closed_loop_requests_are_sent_when_scheduled() -> None:
    r = simulate("chat", PROFILE, overrides=SMALL)
    assert all(rec.scheduled_s is not None and rec.queue_s == 0 for rec in r.records)
    assert r.observed["effective_ttft_ms.p50"] == r.observed["ttft_ms.p50"]


def test_result_json_has_the_window_and_judges_on_it() -> None:
    r = simulate("chat", PROFILE, overrides={**SMALL, "users": 6, "turns": 20,
                                             "duration_s": 20},
                 slo={"ttft_p50_ms": 5000, "warmup_s": 5})
    w = r.to_dict()["window"]
    assert w["warmup_s"] == 5 and w["excluded_warmup"] > 0
    assert w["judged"] == w["requests"] - w["excluded_warmup"] - w["excluded_cooldown"] \
        - r.metrics["outcomes"]["cancelled"]
    assert set(w["sketches"]) == {"ttft_ms", "effective_ttft_ms", "e2e_ms", "decode_tps"}
    assert w["sketches"]["ttft_ms"]["count"] == w["judged"]
    assert r.metrics["requests"] == w["requests"]  # metrics describe the whole run


def test_periods_are_reported_and_judged() -> None:
    r = simulate("chat", PROFILE, overrides={**SMALL, "users": 6, "turns": 40,
                                             "duration_s": 40},
                 slo={"ttft_p95_ms": 5000, "decode_tps_p10": 1e6, "period_s": 10,
                      "periods_met_min": 0.9})
    periods = r.window["periods"]
    assert len(periods) >= 3 and all(p["requests"] > 0 for p in periods)
    by_key = {c.key: c for c in r.verdict.checks}
    met, judged = by_key["ttft_p95_ms"].periods
    assert met == judged == len(periods) and by_key["ttft_p95_ms"].status == "pass"
    assert by_key["decode_tps_p10"].periods == (0, len(periods))
    assert by_key["decode_tps_p10"].status == "fail"


def test_repeat_pools_runs_and_reports_their_spread() -> None:
    single = simulate("chat", PROFILE, overrides=SMALL, slo={"ttft_p95_ms": 5000})
    r = simulate("chat", PROFILE, overrides=SMALL, slo={"ttft_p95_ms": 5000, "repeat": 3})
    assert len(r.records) == 3 * len(single.records)
    assert r.window["runs"] == 3 and r.window["judged"] == 3 * single.window["judged"]
    spread = r.window["repeats"]["spread"]["ttft_ms.p95"]
    assert len(spread["per_run"]) == 3 and spread["min"] <= spread["max"]
    # the summary table and JUnit count every run's requests, not the last run's
    props = dict(properties(r))
    assert props["ctxplat.requests"] == len(r.records) and props["ctxplat.runs"] == 3
    assert props["ctxplat.errors"] == 0 and props["ctxplat.outcome.ok"] == len(r.records)


def test_inconclusive_rerun_pools_more_requests_then_fails() -> None:
    r = simulate("chat", PROFILE, overrides=SMALL,
                 slo={"ttft_p99_ms": 5000, "on_inconclusive": "rerun", "max_reruns": 2})
    assert r.window["runs"] == 3
    assert r.verdict.status == "inconclusive" and not r.verdict.passed


def test_inconclusive_rerun_stops_once_the_verdict_is_clear() -> None:
    r = simulate("chat", PROFILE, overrides=SMALL,
                 slo={"ttft_p50_ms": 5000, "on_inconclusive": "rerun", "max_reruns": 2})
    assert r.window["runs"] == 1 and r.verdict.status == "pass"


def test_inconclusive_under_fail_policy_fails_the_pytest_test(pytester: pytest.Pytester
                                                               ) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_gate="""
        import pytest

        @pytest.mark.slo(ttft_p99_ms=60000, on_inconclusive="fail")
        @pytest.mark.workload("chat", users=2, turns=3, think_time_s=0.2,
                              start_spread_s=0.5, system_prompt_tokens=256, user_tokens=32,
                              output_tokens=4, block_size=16)
        def test_gate(ctxplat_run):
            ctxplat_run()
    """)
    result = pytester.runpytest("--ctxplat-sim-speedup=20", "--ctxplat-timing-skew-max-ms=inf",
                                "-p", "no:cacheprovider",
                                "--ctxplat-results=res")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*SLOViolation: SLO inconclusive (1 of 1 objectives*",
        "*ttft_p99_ms*<= 60000*INCONCLUSIVE: 6 requests judged; a 95% bound on this "
        "percentile needs at least 368*inf]*",
        "*test_gate.py::test_gate*failed*inconclusive*",
        "WARNING test_gate.py::test_gate: SLO inconclusive (failed, on_inconclusive='fail')*",
    ])
