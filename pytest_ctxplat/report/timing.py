"""Measurement validity: the client's timings held against the server's own account.

A load test measures latency from the client, so its figures include the network, the
client's own overhead and, against the simulator, the error of running the model's clock
faster than real time (``speedup``). Where the server says what each request took in its
model time (the simulator's ``usage.ctxplat_model_ttft_ms``), :func:`timing_section`
summarises the per-request discrepancy, *client minus model*, and judges whether the
run's timings can be trusted: a run whose discrepancy p95 exceeds the bound (both the
absolute one in milliseconds and the one relative to each request's model TTFT) is an
*invalid measurement*, which fails the test like a breached objective but says why.

Against vLLM (no per-request model time), :func:`histogram_section` compares the mean of
the client's TTFT with the mean of the server's ``vllm:time_to_first_token_seconds``
histogram over the run (and their quantiles, estimated from the buckets): network and
client overhead, for information.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .records import RequestRecord

__all__ = ["DEFAULT_SKEW_MAX_MS", "DEFAULT_SKEW_MAX_RATIO", "histogram_quantile",
           "histogram_section", "invalid_reason", "timing_section"]

#: default bounds of the TTFT discrepancy's p95 (see docs/concepts/simulator.md, "Timing
#: over HTTP"): a run is an invalid measurement when the p95 of |client - model| TTFT
#: exceeds this many milliseconds *and* the p95 of that discrepancy relative to each
#: request's model TTFT exceeds this ratio
DEFAULT_SKEW_MAX_MS = 100.0
DEFAULT_SKEW_MAX_RATIO = 1.0


def _q(values: np.ndarray[Any, Any], q: float) -> float | None:
    return float(np.percentile(values, q)) if values.size else None


def _dist(values: np.ndarray[Any, Any]) -> dict[str, float | None]:
    return {"p50": _q(values, 50), "p95": _q(values, 95),
            "max": float(values.max()) if values.size else None}


def timing_section(records: Sequence[RequestRecord], max_ms: float | None = None,
                   max_ratio: float | None = None) -> dict[str, Any] | None:
    """The discrepancy between the client's timings and the server's model time over the
    successful ``records`` that carry one, and the validity check; None when no record
    does (the server does not report model time).

    Keys: ``source``, ``requests``, ``ttft_skew_ms`` and ``e2e_skew_ms`` (signed, client
    minus model: ``p50``, ``p95``, ``max``), ``abs_ttft_skew_ms_p95``,
    ``relative_ttft_skew_p95`` (|skew| / model TTFT), ``model_ttft_ms`` (``p50``,
    ``p95``, ``max``), ``bound`` (``max_ms``, ``max_ratio``), ``valid`` and ``reason``
    (why not valid, else None)."""
    known = [r for r in records if r.ok and r.ttft_s is not None and r.model_ttft_s is not None]
    if not known:
        return None
    max_ms = DEFAULT_SKEW_MAX_MS if max_ms is None else max_ms
    max_ratio = DEFAULT_SKEW_MAX_RATIO if max_ratio is None else max_ratio
    skew = np.array([r.ttft_skew_s for r in known], dtype=np.float64) * 1000.0
    model = np.array([r.model_ttft_s for r in known], dtype=np.float64) * 1000.0
    e2e = np.array([v for v in (r.e2e_skew_s for r in known) if v is not None],
                   dtype=np.float64) * 1000.0
    absolute = np.abs(skew)
    relative = absolute / np.maximum(model, 1e-3)
    abs_p95 = float(np.percentile(absolute, 95))
    rel_p95 = float(np.percentile(relative, 95))
    section: dict[str, Any] = {
        "source": "server model time per request",
        "requests": len(known),
        "ttft_skew_ms": _dist(skew),
        "e2e_skew_ms": _dist(e2e),
        "abs_ttft_skew_ms_p95": abs_p95,
        "relative_ttft_skew_p95": rel_p95,
        "model_ttft_ms": _dist(model),
        "bound": {"max_ms": max_ms, "max_ratio": max_ratio},
    }
    reason = None
    if abs_p95 > max_ms and rel_p95 > max_ratio:
        reason = (f"client TTFT differs from the server's model time by {abs_p95:.1f} ms "
                  f"at p95 ({rel_p95:.0%} of the model TTFT), beyond the bound of "
                  f"{max_ms:g} ms and {max_ratio:.0%} (timing_skew_max_ms, "
                  f"timing_skew_max_ratio): against the simulator, lower its speed-up; "
                  f"at speed-up 1 the client or the server is short of CPU for this load")
    section["valid"] = reason is None
    section["reason"] = reason
    return section


def invalid_reason(section: Mapping[str, Any] | None) -> str | None:
    """Why a run's timings are not a valid measurement (None: valid or not checked)."""
    if not section or section.get("valid", True):
        return None
    reason = section.get("reason")
    return str(reason) if reason else "invalid measurement"


def histogram_quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a Prometheus histogram given as cumulative
    ``(upper bound, count)`` pairs, interpolated linearly inside the bucket (as
    Prometheus' ``histogram_quantile`` does); None when it is empty."""
    pairs = sorted(buckets)
    if not pairs or pairs[-1][1] <= 0:
        return None
    rank = q * pairs[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in pairs:
        if count >= rank:
            if math.isinf(upper):
                return lower
            inside = count - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = upper, count
    return pairs[-1][0]


def histogram_section(records: Sequence[RequestRecord], count: float, total_s: float,
                      buckets: Sequence[tuple[float, float]], time_scale: float = 1.0
                      ) -> dict[str, Any] | None:
    """Client TTFT against the server's TTFT histogram over the same run (vLLM's
    ``vllm:time_to_first_token_seconds``: ``count``, ``total_s`` (its ``_sum``) and
    cumulative ``buckets`` as deltas over the run). Figures in ms; ``ttft_skew_ms_mean``
    is the client's mean minus the server's (network and client overhead). None when
    either side saw no request. ``time_scale`` converts the server's seconds to the
    client's (the simulator's speedup; 1 for a real server)."""
    client = np.array([r.ttft_s for r in records if r.ok and r.ttft_s is not None],
                      dtype=np.float64) * 1000.0
    if count <= 0 or not client.size:
        return None
    scale = 1000.0 * time_scale
    server_mean = total_s / count * scale
    section: dict[str, Any] = {
        "source": "server histogram (vllm:time_to_first_token_seconds)",
        "requests": int(client.size),
        "server_requests": int(count),
        "client_ttft_ms": {"mean": float(client.mean()), "p50": _q(client, 50),
                           "p95": _q(client, 95)},
        "server_ttft_ms": {"mean": server_mean},
        "ttft_skew_ms_mean": float(client.mean()) - server_mean,
    }
    for name, q in (("p50", 0.5), ("p95", 0.95)):
        v = histogram_quantile(buckets, q)
        section["server_ttft_ms"][name] = None if v is None else v * scale
    return section
