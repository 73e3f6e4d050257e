"""SLO spec validation and verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_ctxplat.errors import ConfigError
from pytest_ctxplat.report.intervals import percentile_interval
from pytest_ctxplat.slo import SLO_METRICS, SLOSpec, evaluate, parse_slo


def test_every_issue_key_is_supported() -> None:
    keys = {"ttft_p50_ms", "ttft_p90_ms", "ttft_p95_ms", "ttft_p99_ms", "itl_p99_ms",
            "e2e_p95_ms", "decode_tps_p10", "decode_tps_p50", "output_tokens_per_request_min",
            "cache_hit_rate_min", "error_rate_max", "goodput_min"}
    assert keys <= set(SLO_METRICS)
    assert "cache_hit_source" in SLOSpec.valid_keys()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ttft_p95": 100}, r"ttft_p95: unknown key; valid: .*ttft_p95_ms"),
        ({"ttft_p95_ms": -1}, "ttft_p95_ms: must be >= 0"),
        ({"cache_hit_rate_min": 1.2}, r"cache_hit_rate_min: must be <= 1, got 1.2"),
        ({"error_rate_max": 2}, r"error_rate_max: must be <= 1, got 2"),
        ({"output_tokens_per_request_min": 1.5}, "must be an integer, got 1.5"),
        ({"ttft_p95_ms": "fast"}, "must be a number"),
        ({"ttft_p95_ms": True}, "must be a number"),
        ({"cache_hit_rate_min": 0.5, "cache_hit_source": "gpu"}, "designed, request, server"),
        ({"goodput_min": 0.9}, "good_ttft_ms"),
        ({"decode_tps_p10": 0}, "must be > 0"),
        ({"periods_met_min": 0.9}, "periods_met_min: needs period_s"),
        ({"on_inconclusive": "retry"}, "on_inconclusive: .*warn, fail, rerun"),
        ({"confidence": 1}, "confidence: must be < 1"),
        ({"confidence": 0.5}, "confidence: must be > 0.5"),
        ({"repeat": 0}, "repeat: must be >= 1"),
        ({"period_s": 0}, "period_s: must be > 0"),
    ],
)
def test_invalid_slo_names_the_test_and_key(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        parse_slo(kwargs, "test_mod.py::test_x")
    assert str(info.value).startswith("test_mod.py::test_x: ")


def test_verdict_directions_and_margins() -> None:
    spec = SLOSpec(ttft_p95_ms=100, decode_tps_p10=50, cache_hit_rate_min=0.8,
                   cache_hit_source="server", error_rate_max=0.0)
    v = evaluate(spec, {"ttft_ms.p95": 80.0, "decode_tps.p10": 40.0,
                        "hit_rate.server": 0.9, "error_rate": 0.0})
    by_key = {c.key: c for c in v.checks}
    assert by_key["ttft_p95_ms"].passed and math.isclose(by_key["ttft_p95_ms"].margin, 0.2)
    assert not by_key["decode_tps_p10"].passed
    assert math.isclose(by_key["decode_tps_p10"].margin, -0.2)
    assert by_key["cache_hit_rate_min"].metric == "hit_rate.server"
    assert by_key["error_rate_max"].passed
    assert not v.passed
    table = v.table()
    assert "decode_tps_p10" in table and "FAIL" in table and "-20.0%" in table


def test_unmeasured_metric_fails_with_reason() -> None:
    spec = SLOSpec(cache_hit_rate_min=0.5, cache_hit_source="request")
    v = evaluate(spec, {"hit_rate.request": None},
                 {"hit_rate.request": "server did not report cached_tokens"})
    assert not v.passed
    assert "server did not report cached_tokens" in v.table()


def test_window_and_verdict_keys_have_documented_defaults() -> None:
    spec = SLOSpec()
    assert (spec.confidence, spec.on_inconclusive, spec.max_reruns, spec.repeat) == (
        0.95, "warn", 2, 1)
    assert spec.warmup_s is None and spec.cooldown_s is None and spec.warmup_requests == 0
    assert SLO_METRICS["effective_ttft_p95_ms"][0] == "effective_ttft_ms.p95"


def _p99_of_48(target: float, policy: str) -> tuple[str, bool, str]:
    values = [20.0 + i for i in range(48)]
    point = float(np.percentile(values, 99))
    v = evaluate(SLOSpec(ttft_p99_ms=target, on_inconclusive=policy), {"ttft_ms.p99": point},
                 {"ttft_ms.p99": "48 requests judged; a 95% bound needs at least 368"},
                 intervals={"ttft_ms.p99": percentile_interval(values, 0.99, 0.95, point)})
    return v.status, v.passed, v.table()


def test_p99_of_few_requests_is_inconclusive_and_passes_with_warn() -> None:
    status, passed, table = _p99_of_48(3000, "warn")
    assert status == "inconclusive" and passed
    assert "inconclusive (warn)" in table and "at least 368" in table and "inf]" in table


def test_inconclusive_fails_under_fail_and_rerun_policies() -> None:
    for policy in ("fail", "rerun"):
        status, passed, table = _p99_of_48(3000, policy)
        assert status == "inconclusive" and not passed
        assert "INCONCLUSIVE" in table


def test_clear_breach_fails_even_without_a_pessimistic_bound() -> None:
    # every request is slower than the target: the optimistic bound misses it
    status, passed, _ = _p99_of_48(10, "warn")
    assert status == "fail" and not passed


def test_interval_inside_the_target_passes_and_straddling_is_inconclusive() -> None:
    spec = SLOSpec(ttft_p95_ms=100, decode_tps_p10=50)
    v = evaluate(spec, {"ttft_ms.p95": 80.0, "decode_tps.p10": 60.0},
                 intervals={"ttft_ms.p95": (70.0, 95.0), "decode_tps.p10": (45.0, 70.0)})
    by_key = {c.key: c for c in v.checks}
    assert by_key["ttft_p95_ms"].status == "pass"
    assert by_key["decode_tps_p10"].status == "inconclusive"
    assert by_key["decode_tps_p10"].interval == (45.0, 70.0)
    assert v.status == "inconclusive" and v.passed
    d = v.to_dict()
    assert d["status"] == "inconclusive" and d["checks"][1]["status"] == "inconclusive"


def test_error_rate_is_judged_on_the_observed_value_not_its_interval() -> None:
    spec = SLOSpec(error_rate_max=0.0)
    one_error = evaluate(spec, {"error_rate": 1 / 500},
                         rate_intervals={"error_rate": (0.0004, 0.011)})
    assert one_error.status == "fail" and not one_error.passed
    assert one_error.checks[0].interval == (0.0004, 0.011)
    none = evaluate(spec, {"error_rate": 0.0}, rate_intervals={"error_rate": (0.0, 0.0076)})
    assert none.status == "pass" and none.passed


def test_periods_judge_percentiles_by_share_of_periods_met() -> None:
    spec = SLOSpec(ttft_p95_ms=100, period_s=30, periods_met_min=0.9)
    ok = evaluate(spec, {"ttft_ms.p95": 120.0}, periods={"ttft_ms.p95": (9, 10)},
                  intervals={"ttft_ms.p95": (110.0, 130.0)})
    assert ok.status == "pass" and ok.checks[0].periods == (9, 10)
    bad = evaluate(spec, {"ttft_ms.p95": 80.0}, periods={"ttft_ms.p95": (8, 10)})
    assert bad.status == "fail"
    assert "met in 8 of 10 periods of 30 s" in bad.table()
