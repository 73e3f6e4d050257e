"""Run statistics from request records: percentiles, hit rates, goodput.

Percentile names live in one place (:data:`PERCENTILES`); every figure is computed from
the records of one run with numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .records import ERROR_OUTCOMES, OUTCOMES, RequestRecord
from .sessions import SESSION_SAMPLED, session_samples

__all__ = ["PERCENTILES", "SAMPLED", "designed_variant_rates", "hit_rates",
           "observed_metrics", "samples", "summarize"]

PERCENTILES: dict[str, float] = {"p10": 10, "p50": 50, "p90": 90, "p95": 95, "p99": 99}


def _dist(values: Sequence[float] | np.ndarray, scale: float = 1.0) -> dict[str, float] | None:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return None
    arr = arr * scale
    out = {name: float(np.percentile(arr, q)) for name, q in PERCENTILES.items()}
    out["mean"] = float(arr.mean())
    out["min"] = float(arr.min())
    out["max"] = float(arr.max())
    return out


def summarize(records: Sequence[RequestRecord], wall_s: float) -> dict[str, Any]:
    """Client-side figures of a run (latencies in ms, speeds in tokens/s)."""
    ok = [r for r in records if r.ok]
    outcomes = outcome_counts(records)
    errors = sum(outcomes[o] for o in ERROR_OUTCOMES)
    judged = len(records) - outcomes["cancelled"] - outcomes["in_flight"]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    effective = [v for v in (r.effective_ttft_s for r in ok) if v is not None]
    e2e = [r.e2e_s for r in ok if r.e2e_s is not None]
    tps = [v for v in (r.decode_tps for r in ok) if v is not None]
    gaps = np.concatenate([np.frombuffer(r.chunk_gaps_s, dtype=np.float64) for r in ok]) if ok \
        else np.zeros(0)
    out_tokens = sum(r.output_tokens for r in ok)
    span = _span(records) or wall_s
    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": errors,
        "cancelled": outcomes["cancelled"],
        "error_rate": (errors / judged) if judged else None,
        "outcomes": outcomes,
        "ttft_ms": _dist(ttft, 1000.0),
        "effective_ttft_ms": _dist(effective, 1000.0),
        "queue_ms": _dist([r.queue_s for r in ok], 1000.0),
        "itl_ms": _dist(gaps, 1000.0),
        "e2e_ms": _dist(e2e, 1000.0),
        "decode_tps": _dist(tps),
        "output_tokens": _dist([r.output_tokens for r in ok]),
        "prompt_tokens": _dist([r.prompt_tokens for r in ok]),
        "output_tokens_total": out_tokens,
        "prompt_tokens_total": sum(r.prompt_tokens for r in ok),
        "duration_s": span,
        "requests_per_s": (len(ok) / span) if span else None,
        "output_tokens_per_s": (out_tokens / span) if span else None,
        "max_in_flight": _max_in_flight(records),
    }


def outcome_counts(records: Sequence[RequestRecord]) -> dict[str, int]:
    """Requests per outcome class (every class present, zero or not), plus
    ``in_flight`` for records without an outcome yet (a snapshot of a running run)."""
    counts = dict.fromkeys((*OUTCOMES, "in_flight"), 0)
    for r in records:
        counts[r.outcome or "in_flight"] += 1
    return counts


def _span(records: Sequence[RequestRecord]) -> float | None:
    ends = [r.end_s for r in records if r.end_s is not None]
    if not records or not ends:
        return None
    return max(ends) - min(r.start_s for r in records)


def _max_in_flight(records: Sequence[RequestRecord]) -> int:
    events = []
    for r in records:
        if r.end_s is None:
            continue
        events.append((r.start_s, 1))
        events.append((r.end_s, -1))
    events.sort(key=lambda e: (e[0], e[1]))
    cur = peak = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return peak


def hit_rates(
    records: Sequence[RequestRecord], server: Mapping[str, Any] | None
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Designed, per-request and server-side hit rates, plus notes on missing ones."""
    ok = [r for r in records if r.ok]
    notes: dict[str, str] = {}
    prompt = sum(r.prompt_tokens for r in ok)
    designed = (sum(r.designed_cached_tokens for r in ok) / prompt) if prompt else None
    if designed is None:
        notes["hit_rate.designed"] = "no successful requests"
    reported = [r for r in ok if r.cached_tokens is not None]
    request: float | None = None
    if not ok:
        notes["hit_rate.request"] = "no successful requests"
    elif not reported:
        notes["hit_rate.request"] = (
            "server did not report usage.prompt_tokens_details.cached_tokens "
            "(vLLM needs --enable-prompt-tokens-details)"
        )
    else:
        denom = sum((r.usage_prompt_tokens or r.prompt_tokens) for r in reported)
        request = sum(r.cached_tokens or 0 for r in reported) / denom if denom else None
    server_rate = None
    if server is None:
        notes["hit_rate.server"] = "server /metrics not available"
    else:
        server_rate = server.get("prefix_hit_rate")
        if server_rate is None:
            notes["hit_rate.server"] = server.get("note", "server reported no prefix-cache queries")
    return {"designed": designed, "request": request, "server": server_rate}, notes


def designed_variant_rates(
    records: Sequence[RequestRecord], variants: Mapping[str, Sequence[int]]
) -> dict[str, float | None]:
    """Designed hit rates of a cache with a TTL or a capacity (``designed_ttl_300s``,
    ``designed_cap_400000``): ``variants`` holds designed cached tokens per record, in
    record order; token-weighted over successful requests like the other rates."""
    out: dict[str, float | None] = {}
    for label, cached in variants.items():
        pairs = [(r.prompt_tokens, c) for r, c in zip(records, cached, strict=False) if r.ok]
        prompt = sum(p for p, _ in pairs)
        out[label] = sum(c for _, c in pairs) / prompt if prompt else None
    return out


def goodput(records: Sequence[RequestRecord], thresholds: Mapping[str, float]) -> float | None:
    """Share of requests that succeeded and met every per-request threshold."""
    if not records:
        return None
    good = 0
    for r in records:
        if not r.ok or r.ttft_s is None:
            continue
        if "good_ttft_ms" in thresholds and r.ttft_s * 1000 > thresholds["good_ttft_ms"]:
            continue
        e2e = r.e2e_s
        if "good_e2e_ms" in thresholds and (e2e is None or e2e * 1000 > thresholds["good_e2e_ms"]):
            continue
        if "good_decode_tps" in thresholds:
            tps = r.decode_tps
            if tps is None or tps < thresholds["good_decode_tps"]:
                continue
        good += 1
    return good / len(records)


def observed_metrics(
    summary: Mapping[str, Any], rates: Mapping[str, float | None], goodput_value: float | None
) -> dict[str, float | None]:
    """Flatten figures to the metric names SLO keys refer to (``ttft_ms.p95`` ...)."""
    out: dict[str, float | None] = {}
    for group in ("ttft_ms", "effective_ttft_ms", "itl_ms", "e2e_ms", "decode_tps",
                  "output_tokens"):
        dist = summary.get(group)
        for name in (*PERCENTILES, "mean", "min", "max"):
            out[f"{group}.{name}"] = dist[name] if dist else None
    out["error_rate"] = summary.get("error_rate")
    for source, value in rates.items():
        out[f"hit_rate.{source}"] = value
    out["goodput"] = goodput_value
    return out


# metric groups whose percentiles are judged with intervals: one value per request (per
# token gap for itl_ms; per turn, session or fan-out for the session groups)
SAMPLED = ("ttft_ms", "effective_ttft_ms", "itl_ms", "e2e_ms", "decode_tps", *SESSION_SAMPLED)


def samples(records: Sequence[RequestRecord]) -> dict[str, np.ndarray]:
    """The values behind each :data:`SAMPLED` group's percentiles (ms, tokens/s; the
    session groups treat ``records`` as one run)."""
    ok = [r for r in records if r.ok]

    def arr(values: list[float], scale: float = 1.0) -> np.ndarray:
        return np.asarray(values, dtype=np.float64) * scale

    gaps = np.concatenate([np.frombuffer(r.chunk_gaps_s, dtype=np.float64) for r in ok]) \
        if ok else np.zeros(0)
    return {
        "ttft_ms": arr([r.ttft_s for r in ok if r.ttft_s is not None], 1000.0),
        "effective_ttft_ms": arr([v for v in (r.effective_ttft_s for r in ok)
                                  if v is not None], 1000.0),
        "itl_ms": gaps * 1000.0,
        "e2e_ms": arr([v for v in (r.e2e_s for r in ok) if v is not None], 1000.0),
        "decode_tps": arr([v for v in (r.decode_tps for r in ok) if v is not None]),
        **session_samples([records]),
    }
