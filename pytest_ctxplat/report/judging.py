"""What a verdict is judged on besides the observed figures: the measurement window of
each run, percentile intervals, per-period results and the spread across repeated runs.

:func:`judge_inputs` takes the records of one or more runs of the same workload (a
``repeat=N`` test, or reruns of an inconclusive one), keeps each run's measurement
window (:mod:`.window`), pools the kept requests and returns what
:func:`~pytest_ctxplat.slo.evaluate` needs plus the result JSON's ``window`` section.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..slo import SLOSpec
from . import sessions, stats
from .intervals import percentile_interval, requests_needed, wilson_interval
from .records import ERROR_OUTCOMES, RequestRecord
from .sketch import Sketch
from .window import Window, measurement_window, periods

__all__ = ["Judging", "add_figures", "judge_inputs"]

SKETCHED = ("ttft_ms", "effective_ttft_ms", "e2e_ms", "decode_tps")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Judging:
    """The pooled window's records and what :func:`~pytest_ctxplat.slo.evaluate` takes
    beside the observed figures; ``section`` is the result JSON's ``window``."""

    judged: list[RequestRecord]
    intervals: dict[str, tuple[float, float] | None]
    rate_intervals: dict[str, tuple[float, float] | None]
    notes: dict[str, str]
    periods: dict[str, tuple[int, int]]
    section: dict[str, Any]
    kept_runs: list[list[RequestRecord]]
    windows: list[Window]


def _percentile_metrics(spec: SLOSpec) -> dict[str, tuple[str, str, float, float]]:
    """metric -> (group, direction, q, target) of the spec's percentile objectives."""
    out = {}
    for key, target in spec.objectives().items():
        metric, direction, _ = spec.metric_of(key)
        group, _, name = metric.partition(".")
        if group in stats.SAMPLED and name in stats.PERCENTILES:
            out[metric] = (group, direction, stats.PERCENTILES[name] / 100.0, target)
    return out


def judge_inputs(runs: Sequence[Sequence[RequestRecord]], spec: SLOSpec,
                 bound_s: float | None) -> Judging:
    """Window each run (bounded by ``bound_s``) and pool the kept records; then
    :func:`add_figures` once the pooled observed figures are known."""
    judged: list[RequestRecord] = []
    windows: list[Window] = []
    kept_runs: list[list[RequestRecord]] = []
    for run in runs:
        kept, w = measurement_window(run, bound_s=bound_s, warmup_s=spec.warmup_s,
                                     warmup_requests=spec.warmup_requests,
                                     cooldown_s=spec.cooldown_s)
        judged.extend(kept)
        windows.append(w)
        kept_runs.append(kept)
    section: dict[str, Any] = {**windows[-1].to_dict(), "runs": len(runs),
                               "requests": sum(w.requests for w in windows),
                               "judged": len(judged),
                               "excluded_warmup": sum(w.excluded_warmup for w in windows),
                               "excluded_cooldown": sum(w.excluded_cooldown for w in windows),
                               "hit_rates": "whole run (server counters cannot be windowed)",
                               "error_rate": "whole run (an error is never warm-up)"}
    return Judging(judged=judged, intervals={}, rate_intervals={}, notes={}, periods={},
                   section=section, kept_runs=kept_runs, windows=windows)


def add_figures(out: Judging, runs: Sequence[Sequence[RequestRecord]], spec: SLOSpec,
                observed: Mapping[str, float | None]) -> None:
    """Intervals, notes, periods, the spread across runs and the window's sketches for
    ``spec``'s objectives, given the pooled ``observed`` figures."""
    pct = _percentile_metrics(spec)
    _intervals(out, pct, out.judged, spec.confidence, observed)
    _rate_intervals(out, runs, out.judged, spec)
    if spec.period_s is not None:
        _periods(out, pct, out.kept_runs, out.windows, spec.period_s)
    if len(runs) > 1:
        out.section["repeats"] = _spread(pct, out.kept_runs)
    out.section["sketches"] = {g: Sketch(v).to_dict() for g, v in
                               stats.samples(out.judged).items() if g in SKETCHED}


def _intervals(out: Judging, pct: Mapping[str, tuple[str, str, float, float]],
               judged: Sequence[RequestRecord], confidence: float,
               observed: Mapping[str, float | None]) -> None:
    values = stats.samples(judged)
    # session figures per run, then pooled: session ids repeat across repeated runs
    values.update(sessions.session_samples(out.kept_runs))
    for metric, (group, direction, q, _target) in pct.items():
        sample = values[group]
        out.intervals[metric] = iv = percentile_interval(
            sample, q, confidence, point=observed.get(metric), direction=direction)
        if iv is None:
            continue
        pessimistic = iv[1] if direction == "max" else iv[0]
        if math.isinf(pessimistic):
            need = requests_needed(q, confidence)[1 if direction == "max" else 0]
            unit = "token gaps" if group == "itl_ms" else "requests"
            out.notes[metric] = (f"{sample.size} {unit} judged; a {confidence:.0%} bound "
                                 f"on this percentile needs at least {need}")


def _rate_intervals(out: Judging, runs: Sequence[Sequence[RequestRecord]],
                    judged: Sequence[RequestRecord], spec: SLOSpec) -> None:
    """Wilson intervals of the rates, for information (rates are judged as observed)."""
    every = [r for run in runs for r in run if r.outcome not in (None, "cancelled")]
    errors = sum(1 for r in every if r.outcome in ERROR_OUTCOMES)
    out.rate_intervals["error_rate"] = wilson_interval(errors, len(every), spec.confidence)
    if spec.goodput_min is not None and judged:
        good = stats.goodput(judged, spec.good_thresholds()) or 0.0
        out.rate_intervals["goodput"] = wilson_interval(round(good * len(judged)),
                                                        len(judged), spec.confidence)


def _meets(value: float, direction: str, target: float) -> bool:
    return value <= target if direction == "max" else value >= target


def _periods(out: Judging, pct: Mapping[str, tuple[str, str, float, float]],
             kept_runs: Sequence[Sequence[RequestRecord]], windows: Sequence[Window],
             period_s: float) -> None:
    """Per-period percentiles (from sketches) and how many periods met each target."""
    table: list[dict[str, Any]] = []
    counts = {m: [0, 0] for m in pct}
    for run, (kept, w) in enumerate(zip(kept_runs, windows, strict=True)):
        for start, recs in periods(kept, w.start_s, period_s):
            row: dict[str, Any] = {"run": run, "start_s": start, "requests": len(recs)}
            values = stats.samples(recs)
            for metric, (group, direction, q, target) in pct.items():
                v = Sketch(values[group]).quantile(q)
                row[metric] = v
                if v is not None:
                    counts[metric][1] += 1
                    counts[metric][0] += _meets(v, direction, target)
            table.append(row)
    out.periods.update({m: (c[0], c[1]) for m, c in counts.items()})
    out.section["period_s"] = period_s
    out.section["periods"] = table


def _spread(pct: Mapping[str, tuple[str, str, float, float]],
            kept_runs: Sequence[Sequence[RequestRecord]]) -> dict[str, Any]:
    """Each objective's percentile per run, and their range and spread."""
    spread: dict[str, Any] = {}
    per_run = [stats.samples(kept) for kept in kept_runs]
    for metric, (group, _direction, q, _target) in pct.items():
        vals = [float(np.percentile(v[group], q * 100)) if v[group].size else None
                for v in per_run]
        known = [v for v in vals if v is not None]
        spread[metric] = {"per_run": vals,
                          "min": min(known) if known else None,
                          "max": max(known) if known else None,
                          "stdev": float(np.std(known, ddof=1)) if len(known) > 1 else None}
    return {"runs": len(kept_runs), "judged_per_run": [len(k) for k in kept_runs],
            "spread": spread}
