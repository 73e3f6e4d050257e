"""Percentile intervals, rate intervals and the mergeable sketches behind pooled and
per-period percentiles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_ctxplat.report.intervals import (
    percentile_interval,
    rank_bounds,
    requests_needed,
    wilson_interval,
)
from pytest_ctxplat.report.sketch import RELATIVE_ACCURACY, Sketch

QUANTILES = (0.1, 0.5, 0.9, 0.95, 0.99)


def _coverage(n: int, q: float, low: int | None, high: int | None) -> float:
    """Exact probability that x[low] <= quantile <= x[high] (0-based ranks)."""
    below = [math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                      + k * math.log(q) + (n - k) * math.log1p(-q)) for k in range(n + 1)]
    lo = 0 if low is None else low + 1
    hi = n if high is None else high
    return sum(below[lo:hi + 1])


def test_median_bounds_are_the_textbook_order_statistics() -> None:
    # n = 100: the 95% interval of the median is x(40)..x(61) (1-based)
    assert rank_bounds(100, 0.5, 0.95) == (39, 60)


@pytest.mark.parametrize("n", [20, 48, 100, 400, 2000])
@pytest.mark.parametrize("q", [0.1, 0.5, 0.95, 0.99])
def test_rank_bounds_cover_the_quantile_at_the_asked_confidence(n: int, q: float) -> None:
    low, high = rank_bounds(n, q, 0.95)
    assert _coverage(n, q, low, high) >= 0.95
    if low is not None and high is not None:  # and not wastefully wide
        assert _coverage(n, q, low + 1, high - 1) < 0.95 or high - low <= 2


def test_p99_of_48_requests_has_no_upper_bound_and_says_how_many_it_needs() -> None:
    values = np.linspace(10.0, 57.0, 48)
    low, high = percentile_interval(values, 0.99, 0.95, point=float(np.percentile(values, 99)))
    assert math.isinf(high) and low <= np.percentile(values, 99)
    need = requests_needed(0.99, 0.95)[1]
    assert need == 368
    assert rank_bounds(need - 1, 0.99, 0.95)[1] is None
    assert rank_bounds(need, 0.99, 0.95)[1] is not None


def test_min_objective_leaves_its_lower_bound_unknown_on_a_small_sample() -> None:
    values = [50.0, 60.0, 70.0, 80.0]
    low, high = percentile_interval(values, 0.1, 0.95, direction="min")
    assert low == -math.inf and high == 70.0  # P(3+ of 4 below p10) < 2.5%


def test_interval_always_contains_the_reported_point() -> None:
    rng = np.random.default_rng(3)
    values = rng.lognormal(3, 1, 500)
    for q in QUANTILES:
        point = float(np.percentile(values, q * 100))
        low, high = percentile_interval(values, q, 0.95, point=point)
        assert low <= point <= high


def test_wilson_interval_of_no_errors_starts_at_zero() -> None:
    low, high = wilson_interval(0, 50, 0.95)
    assert low == 0.0 and 0.0 < high < 0.1
    low, high = wilson_interval(5, 50, 0.95)
    assert low < 0.1 < high
    assert wilson_interval(0, 0, 0.95) is None


def _within_sketch_error(sketch: Sketch, values: np.ndarray, q: float) -> bool:
    exact = float(np.percentile(values, q * 100, method="lower"))
    got = sketch.quantile(q)
    assert got is not None
    return abs(got - exact) <= RELATIVE_ACCURACY * exact * (1 + 1e-9)


@pytest.mark.parametrize("dist", ["lognormal", "exponential", "uniform", "pareto", "bimodal"])
def test_sketch_quantiles_are_within_one_percent_of_numpy(dist: str) -> None:
    rng = np.random.default_rng(11)
    n = 20_000
    values = {
        "lognormal": rng.lognormal(4, 1.2, n),
        "exponential": rng.exponential(200.0, n),
        "uniform": rng.uniform(5.0, 5000.0, n),
        "pareto": (rng.pareto(1.5, n) + 1) * 30.0,
        "bimodal": np.concatenate([rng.normal(50, 5, n // 2), rng.normal(2000, 100, n // 2)]),
    }[dist]
    values = np.abs(values) + 1e-3
    sketch = Sketch(values)
    for q in (*QUANTILES, 0.999):
        assert _within_sketch_error(sketch, values, q), q


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=1e-3, max_value=1e6, allow_nan=False), min_size=1,
                max_size=300),
       st.sampled_from(QUANTILES))
def test_sketch_quantile_error_holds_for_any_sample(values: list[float], q: float) -> None:
    arr = np.asarray(values)
    assert _within_sketch_error(Sketch(arr), arr, q)


def test_merged_sketches_equal_the_sketch_of_the_pooled_values() -> None:
    rng = np.random.default_rng(5)
    parts = [rng.lognormal(3, 1, 700) for _ in range(3)]
    merged = Sketch.merged(Sketch(p) for p in parts)
    pooled = Sketch(np.concatenate(parts))
    assert merged.count == pooled.count == 2100
    for q in QUANTILES:
        assert merged.quantile(q) == pooled.quantile(q)


def test_sketch_survives_its_json_form() -> None:
    values = np.random.default_rng(2).exponential(100.0, 1000) + 1
    sketch = Sketch(values)
    back = Sketch.from_dict(sketch.to_dict())
    assert back.count == 1000
    for q in QUANTILES:
        assert back.quantile(q) == sketch.quantile(q)
    assert Sketch().quantile(0.5) is None
