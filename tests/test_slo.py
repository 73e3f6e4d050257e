"""SLO spec validation and verdicts."""

from __future__ import annotations

import math

import pytest

from pytest_ctxplat.errors import ConfigError
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
