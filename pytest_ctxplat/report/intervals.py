"""Confidence intervals for judged figures.

Percentiles get distribution-free order-statistic bounds: among ``n`` independent
samples, the count below the true ``q`` quantile is Binomial(n, q), so the sorted
samples ``x[l]`` and ``x[u]`` bracket it with probability ``P(l < B <= u)``. The ranks
are chosen so that each tail holds at most ``(1 - confidence) / 2`` (exact binomial,
computed in log space with numpy). A sample too small for a bound on one side (p99 with
48 requests: ``0.99**48 > 0.025``) has that bound unknown on the objective's pessimistic
side (infinite) and the sample's extreme on its optimistic side (even the best request),
and :func:`requests_needed` says how many requests a finite bound takes.

Rates (error rate, goodput) get a Wilson score interval for information; they are
judged on the observed value (they describe what happened in this run).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

__all__ = ["percentile_interval", "rank_bounds", "requests_needed", "wilson_interval"]


def _binomial_cdf(n: int, q: float) -> npt.NDArray[np.float64]:
    """``P(B <= k)`` for k = 0..n, B ~ Binomial(n, q), 0 < q < 1."""
    k = np.arange(1, n + 1, dtype=np.float64)
    log_choose = np.concatenate([[0.0], np.cumsum(np.log(n - k + 1) - np.log(k))])
    ks = np.arange(n + 1, dtype=np.float64)
    log_pmf = log_choose + ks * math.log(q) + (n - ks) * math.log1p(-q)
    cdf: npt.NDArray[np.float64] = np.cumsum(np.exp(log_pmf))
    return cdf


def rank_bounds(n: int, q: float, confidence: float) -> tuple[int | None, int | None]:
    """0-based ranks ``(l, u)`` into ``n`` sorted samples with ``x[l] <= quantile q <=
    x[u]`` at ``confidence`` (two-sided, equal tails); None where the sample is too
    small for that side."""
    if n <= 0:
        return None, None
    tail = (1.0 - confidence) / 2.0
    cdf = _binomial_cdf(n, q)
    # lower: x[l] (0-based) is at or below the quantile unless B <= l, P = cdf[l]
    ok_low = np.nonzero(cdf[:n] <= tail)[0]
    low = int(ok_low[-1]) if ok_low.size else None
    # upper: x[u] is at or above the quantile unless B >= u + 1, P = 1 - cdf[u]
    ok_high = np.nonzero(1.0 - cdf[:n] <= tail)[0]
    high = int(ok_high[0]) if ok_high.size else None
    return low, high


def percentile_interval(values: Sequence[float] | npt.NDArray[np.float64], q: float,
                        confidence: float, point: float | None = None,
                        direction: str = "max") -> tuple[float, float] | None:
    """Bounds on the ``q`` quantile (0..1) of the distribution ``values`` came from.

    A bound the sample is too small for is unknown on the pessimistic side of an
    objective (``inf`` above for a ``max`` objective, ``-inf`` below for a ``min`` one)
    and the sample's extreme on the optimistic side (a value no better than the best
    request seen: a breach even the best request shows is a clear breach). ``point`` (the
    reported percentile) is always inside the interval. None for no values."""
    arr = np.sort(np.asarray(values, dtype=np.float64))
    n = int(arr.size)
    if n == 0:
        return None
    low_rank, high_rank = rank_bounds(n, q, confidence)
    upper_is_pessimistic = direction == "max"
    if low_rank is not None:
        low = float(arr[low_rank])
    else:
        low = float(arr[0]) if upper_is_pessimistic else -math.inf
    if high_rank is not None:
        high = float(arr[high_rank])
    else:
        high = math.inf if upper_is_pessimistic else float(arr[-1])
    if point is not None:
        low, high = min(low, point), max(high, point)
    return low, high


def requests_needed(q: float, confidence: float) -> tuple[int, int]:
    """Fewest samples for a finite lower and a finite upper bound on the ``q``
    quantile."""
    tail = math.log((1.0 - confidence) / 2.0)
    return (math.ceil(tail / math.log1p(-q)), math.ceil(tail / math.log(q)))


def wilson_interval(k: int, n: int, confidence: float) -> tuple[float, float] | None:
    """Wilson score interval of a proportion ``k / n``; None for ``n == 0``."""
    if n <= 0:
        return None
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high
