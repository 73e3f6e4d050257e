"""Judging a run against a baseline: per-metric tolerances plus a significance test.

A metric *regresses* only when both hold:

1. it moved past its tolerance in the bad direction (latency up, speed down, ...), and
2. a one-sided Mann-Whitney U test over the per-request samples behind it (TTFT, e2e,
   decode speed, per-request hit rates, errors) says the shift is real: ``p < alpha``
   (0.05). Metrics without per-request samples (server hit rate, goodput, other
   figures) are judged on the tolerance alone.

So noise inside the interval passes, and a real regression fails. Default tolerances
per metric family (:data:`DEFAULT_TOLERANCES`): latency ``+10%``, speeds ``-10%``, hit
rates and goodput ``-0.02`` (absolute), error rate ``+0.01`` (absolute), any other
numeric figure ``10%`` either way (a name with ``_ms`` counts as a latency, one with
``tps``, ``per_s``, ``capacity`` or ``throughput`` as a speed, ``hit_rate.*`` as a hit
rate). A tolerance is written ``"+10%"`` (relative, higher
is worse), ``"-10%"`` (relative, lower is worse), ``"10%"`` (relative, the family's
direction), or a number / ``"+0.01"`` (absolute).

Under the table, a *power check*: from the spread of the samples and their counts, the
smallest slowdown the test would detect (80% power at ``alpha``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from tabulate import tabulate

from ..errors import ConfigError, SLOViolation

__all__ = ["ALPHA", "COMPARED", "DEFAULT_TOLERANCES", "BaselineRegression", "Comparison", "Row",
           "Tolerance", "compare", "comparison_text", "detectable_slowdown", "parse_tolerances",
           "samples_from_records", "tolerance_keys"]

ALPHA = 0.05
_POWER_Z = 1.6449 + 0.8416  # one-sided alpha 0.05, power 0.8
_MWU_ARE = math.sqrt(math.pi / 3)  # Mann-Whitney's efficiency against the t-test (normal)

# metric -> (family, per-request sample it is tested on, or None)
COMPARED: dict[str, tuple[str, str | None]] = {
    "ttft_ms.p50": ("latency", "ttft_ms"), "ttft_ms.p95": ("latency", "ttft_ms"),
    "ttft_ms.p99": ("latency", "ttft_ms"), "itl_ms.p50": ("latency", "decode_tps"),
    "itl_ms.p99": ("latency", "decode_tps"), "e2e_ms.p50": ("latency", "e2e_ms"),
    "e2e_ms.p95": ("latency", "e2e_ms"), "decode_tps.p10": ("speed", "decode_tps"),
    "decode_tps.p50": ("speed", "decode_tps"), "output_tokens_per_s": ("speed", "e2e_ms"),
    "hit_rate.designed": ("hit_rate", "hit_rate.designed"),
    "hit_rate.request": ("hit_rate", "hit_rate.request"),
    "hit_rate.server": ("hit_rate", None), "error_rate": ("error_rate", "errors"),
    "goodput": ("goodput", None),
    "effective_ttft_ms.p50": ("latency", "effective_ttft_ms"),
    "effective_ttft_ms.p95": ("latency", "effective_ttft_ms"),
    "effective_ttft_ms.p99": ("latency", "effective_ttft_ms"),
    # session-level figures (tolerance alone: no per-request sample is kept for them)
    "ttft_hit_ms.p95": ("latency", None), "ttft_miss_ms.p95": ("latency", None),
    "session_s.p95": ("latency", None), "fanout_ms.p95": ("latency", None),
}
# metrics tested on a sample that moves the other way (ITL up = decode speed down)
_INVERTED = frozenset({"itl_ms.p50", "itl_ms.p99", "output_tokens_per_s"})
_FLIP = {"max": "min", "min": "max", "both": "both"}
# family -> tolerance text
DEFAULT_TOLERANCES: dict[str, str] = {"latency": "+10%", "speed": "-10%", "hit_rate": "-0.02",
                                      "error_rate": "+0.01", "goodput": "-0.02",
                                      "other": "10%"}
_FAMILY_DIRECTION = {"latency": "max", "speed": "min", "hit_rate": "min", "error_rate": "max",
                     "goodput": "min", "other": "both"}
# observed keys left out of the comparison (the compared percentiles cover them)
_SKIPPED = re.compile(r"^(ttft_ms|effective_ttft_ms|itl_ms|e2e_ms|decode_tps|output_tokens|"
                      r"ttft_hit_ms|ttft_miss_ms|session_s|fanout_ms)\.")


class BaselineRegression(SLOViolation):
    """A run regressed against its baseline; the message is the comparison table. (An
    :class:`~pytest_ctxplat.errors.SLOViolation`, so a test fails the same way.)"""


def tolerance_keys() -> list[str]:
    """Names a tolerance may be given for: metrics (``ttft_ms_p95`` or ``ttft_ms.p95``)
    and families (``latency``, ``speed``, ``hit_rate``, ``error_rate``, ``goodput``,
    ``other``)."""
    return list(dict.fromkeys([*(m.replace(".", "_") for m in COMPARED), *DEFAULT_TOLERANCES]))


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """How far a metric may move in its bad direction: ``amount`` (a fraction of the
    baseline when ``relative``, else in the metric's unit); ``direction`` ``max``
    (higher is worse), ``min`` (lower is worse) or ``both``."""

    amount: float
    relative: bool
    direction: str

    @classmethod
    def parse(cls, value: Any, family: str) -> Tolerance:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"expected '+10%', '-10%', '10%' or a number, got {value!r}")
        text = str(value).strip()
        sign = text[0] if text[:1] in ("+", "-") else ""
        relative = text.endswith("%")
        try:
            amount = float(text[len(sign):].removesuffix("%").strip())
        except ValueError:
            raise ValueError(f"expected '+10%', '-10%', '10%' or a number, got {value!r}"
                             ) from None
        if not math.isfinite(amount) or amount < 0:
            raise ValueError(f"must be a finite amount >= 0, got {value!r}")
        direction = {"+": "max", "-": "min"}.get(sign, _FAMILY_DIRECTION[family])
        return cls(amount / 100 if relative else amount, relative, direction)

    @classmethod
    def from_text(cls, text: str) -> Tolerance:
        """The tolerance :meth:`text` wrote."""
        direction = {"+": "max", "-": "min", "±": "both"}[text[0]]
        return cls.parse(text[1:], "other").replace_direction(direction)

    def replace_direction(self, direction: str) -> Tolerance:
        return dataclasses.replace(self, direction=direction)

    def allowed(self, baseline: float) -> float:
        return self.amount * abs(baseline) if self.relative else self.amount

    def text(self) -> str:
        sign = {"max": "+", "min": "-", "both": "±"}[self.direction]
        return f"{sign}{self.amount:.0%}" if self.relative else f"{sign}{self.amount:g}"


def _family(metric: str) -> str:
    """A metric's family; for figures beyond :data:`COMPARED`, guessed from the name:
    hit rates (``hit_rate.*``, ``hit_rate_gap.*``, ``tier_hit_rate.*``,
    ``external_hit_rate``), ``*_ms*`` latency, speeds and capacities (``tps``, ``per_s``,
    ``capacity``, ``throughput``, ``knee_tokens``: higher is better), else ``other``."""
    if metric in COMPARED:
        return COMPARED[metric][0]
    name = metric.lower()
    if name.startswith(("hit_rate.", "hit_rate_gap.", "tier_hit_rate.", "external_hit_rate")):
        return "hit_rate"
    if name.startswith("knee_tokens."):
        return "speed"
    if "_ms" in name or "latency" in name:
        return "latency"
    if any(word in name for word in ("tps", "per_s", "capacity", "throughput")):
        return "speed"
    return "other"


def parse_tolerances(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check tolerance overrides (metric or family -> text or number) now; returns them
    keyed by metric (``ttft_ms.p95``) or family. A bad key or value is a
    :class:`~pytest_ctxplat.errors.ConfigError` naming ``where``, the key and what is
    valid."""
    out: dict[str, Any] = {}
    by_alias = {m.replace(".", "_"): m for m in COMPARED}
    for key, value in values.items():
        name = by_alias.get(key, key)
        if name not in COMPARED and name not in DEFAULT_TOLERANCES:
            raise ConfigError(f"{where}: {key}: unknown tolerance key; valid: "
                              + ", ".join(tolerance_keys()))
        try:
            Tolerance.parse(value, name if name in DEFAULT_TOLERANCES else _family(name))
        except ValueError as exc:
            raise ConfigError(f"{where}: {key}: {exc}; valid: '+10%' (relative, higher is "
                              "worse), '-10%' (lower is worse), '10%' or 0.02 (absolute, "
                              "the metric's direction)") from None
        out[name] = value
    return out


def _tolerance(metric: str, overrides: Mapping[str, Any]) -> Tolerance:
    family = _family(metric)
    value = overrides.get(metric, overrides.get(family, DEFAULT_TOLERANCES[family]))
    return Tolerance.parse(value, family)


def samples_from_records(records: Iterable[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Per-request samples (from result-JSON records) the significance test uses: TTFT,
    effective TTFT (with the client-side wait from ``scheduled_s``) and e2e in ms,
    decode speed, per-request hit rates (designed and reported) and
    errors (1 per failed request, 0 per successful one)."""
    out: dict[str, list[float]] = {k: [] for k in ("ttft_ms", "effective_ttft_ms", "e2e_ms",
                                                   "decode_tps",
                                                   "hit_rate.designed", "hit_rate.request",
                                                   "errors")}
    for r in records:
        outcome = r.get("outcome")
        if outcome in (None, "cancelled"):
            continue
        out["errors"].append(0.0 if outcome == "ok" else 1.0)
        if outcome != "ok":
            continue
        start, ttft, end = r.get("start_s"), r.get("ttft_s"), r.get("end_s")
        if ttft is not None:
            out["ttft_ms"].append(ttft * 1000)
            scheduled = r.get("scheduled_s")
            wait = max(0.0, start - scheduled) if scheduled is not None else 0.0
            out["effective_ttft_ms"].append((ttft + wait) * 1000)
        if end is not None:
            out["e2e_ms"].append((end - start) * 1000)
        n = r.get("output_tokens") or 0
        if ttft is not None and end is not None and n >= 2 and end - start - ttft > 0:
            out["decode_tps"].append((n - 1) / (end - start - ttft))
        prompt = r.get("prompt_tokens") or 0
        if prompt:
            out["hit_rate.designed"].append((r.get("designed_cached_tokens") or 0) / prompt)
            if r.get("cached_tokens") is not None:
                denom = r.get("usage_prompt_tokens") or prompt
                out["hit_rate.request"].append(r["cached_tokens"] / denom)
    return out


def _p_value(base: Sequence[float], now: Sequence[float], direction: str) -> float | None:
    """One-sided Mann-Whitney U p-value that ``now`` moved in the bad ``direction``."""
    if len(base) < 3 or len(now) < 3:
        return None
    from scipy.stats import mannwhitneyu

    a, b = np.asarray(base, dtype=np.float64), np.asarray(now, dtype=np.float64)
    if np.array_equal(np.sort(a), np.sort(b)):
        return 1.0
    alternative = {"max": "less", "min": "greater", "both": "two-sided"}[direction]
    return float(mannwhitneyu(a, b, alternative=alternative).pvalue)


@dataclasses.dataclass(frozen=True)
class Row:
    """One compared metric. ``verdict``: ``ok``, ``improved``, ``noise`` (past the
    tolerance but not significant), ``REGRESSION`` or ``n/a`` (not measured on one
    side)."""

    metric: str
    baseline: float | None
    now: float | None
    delta: float | None
    tolerance: Tolerance
    p_value: float | None
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "baseline": self.baseline, "now": self.now,
                "delta": self.delta, "relative": self.tolerance.relative,
                "tolerance": self.tolerance.text(), "p_value": self.p_value,
                "verdict": self.verdict}


def _row(metric: str, base: float | None, now: float | None, tol: Tolerance,
         samples: tuple[Sequence[float], Sequence[float]] | None) -> Row:
    """One metric judged: past the tolerance in the bad direction and significant."""
    if base is None or now is None or not (math.isfinite(base) and math.isfinite(now)):
        return Row(metric, base, now, None, tol, None, "n/a")
    diff = now - base
    delta = (diff / abs(base) if base else (0.0 if diff == 0 else math.copysign(math.inf, diff))
             ) if tol.relative else diff
    allowed = tol.allowed(base)
    worse = {"max": diff > allowed, "min": -diff > allowed, "both": abs(diff) > allowed}
    better = {"max": -diff > allowed, "min": diff > allowed, "both": False}
    tested = _FLIP[tol.direction] if metric in _INVERTED else tol.direction
    p = _p_value(*samples, tested) if samples else None
    if worse[tol.direction]:
        verdict = "REGRESSION" if p is None or p < ALPHA else "noise"
    else:
        verdict = "improved" if better[tol.direction] else "ok"
    return Row(metric, base, now, delta, tol, p, verdict)


def _figures(entry: Mapping[str, Any]) -> dict[str, float | None]:
    """The compared figures of a baseline entry or result JSON: the observed metrics plus
    the run's output token rate."""
    out = {k: v for k, v in (entry.get("observed") or {}).items()
           if not _SKIPPED.match(k) or k in COMPARED}
    out["output_tokens_per_s"] = (entry.get("metrics") or {}).get("output_tokens_per_s")
    return {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None)
            for k, v in out.items()}


def _spread(values: Sequence[float]) -> float | None:
    arr = np.asarray([v for v in values if v > 0], dtype=np.float64)
    return float(np.std(np.log(arr), ddof=1)) if arr.size >= 3 else None


def detectable_slowdown(base: Sequence[float], now: Sequence[float]) -> float | None:
    """The smallest relative slowdown (0.05 = 5%) of a latency whose samples are
    ``base`` and ``now`` that a one-sided Mann-Whitney test at ``ALPHA`` detects with 80%
    power: ``exp(2.49 * sigma * sqrt(1/n1 + 1/n2) * sqrt(pi/3)) - 1`` with ``sigma`` the
    pooled spread of the log samples. None with fewer than 3 samples a side."""
    s1, s2 = _spread(base), _spread(now)
    if s1 is None or s2 is None:
        return None
    n1, n2 = len(base), len(now)
    sigma = math.sqrt(((n1 - 1) * s1 ** 2 + (n2 - 1) * s2 ** 2) / (n1 + n2 - 2))
    return math.exp(_POWER_Z * sigma * math.sqrt(1 / n1 + 1 / n2) * _MWU_ARE) - 1


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A run judged against a baseline entry: rows, warnings (engine, hardware, server
    settings that differ), the power check and sample counts."""

    baseline: str
    test: str
    rows: tuple[Row, ...]
    warnings: tuple[str, ...] = ()
    detectable: Mapping[str, float | None] = dataclasses.field(default_factory=dict)
    samples: tuple[int, int] = (0, 0)

    @property
    def passed(self) -> bool:
        return not self.regressions

    @property
    def regressions(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if r.verdict == "REGRESSION")

    @property
    def status(self) -> str:
        return "pass" if self.passed else "regression"

    def table(self) -> str:
        """The comparison as text: a header (baseline, warnings), the table (metric,
        baseline, now, delta, tolerance, p, verdict) and the power check under it."""
        lines = [f"baseline {self.baseline!r} for {self.test}: "
                 + ("no regression" if self.passed else
                    f"{len(self.regressions)} metric(s) regressed")]
        lines += [f"warning: {w}" for w in self.warnings]
        rows = [[r.metric, _fmt(r.baseline), _fmt(r.now), _delta(r), r.tolerance.text(),
                 "" if r.p_value is None else f"{r.p_value:.3g}", r.verdict]
                for r in self.rows]
        lines.append(tabulate(rows, headers=["metric", "baseline", "now", "delta",
                                             "tolerance", "p", "verdict"]))
        lines.append(self.power_line())
        return "\n".join(lines)

    def power_line(self) -> str:
        found = {k: v for k, v in self.detectable.items() if v is not None}
        n1, n2 = self.samples
        if not found:
            return f"power: too few samples to test ({n1} baseline, {n2} now)"
        parts = ", ".join(f"{k} +{v:.1%}" for k, v in found.items())
        return (f"power: smallest slowdown detectable (80% power, p<{ALPHA:g}) with {n1} vs "
                f"{n2} requests: {parts}; a slowdown must also exceed its tolerance")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Comparison:
        """The comparison :meth:`to_dict` wrote (e.g. read back from a result JSON)."""
        rows = tuple(Row(r["metric"], r["baseline"], r["now"], r["delta"],
                         Tolerance.from_text(r["tolerance"]), r["p_value"], r["verdict"])
                     for r in d.get("rows", ()))
        samples = d.get("samples") or {}
        return cls(baseline=str(d.get("baseline")), test=str(d.get("test")), rows=rows,
                   warnings=tuple(d.get("warnings", ())),
                   detectable=dict(d.get("detectable_slowdown") or {}),
                   samples=(int(samples.get("baseline", 0)), int(samples.get("now", 0))))

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "test": self.test, "passed": self.passed,
                "status": self.status, "alpha": ALPHA, "warnings": list(self.warnings),
                "detectable_slowdown": dict(self.detectable),
                "samples": {"baseline": self.samples[0], "now": self.samples[1]},
                "rows": [r.to_dict() for r in self.rows]}


def comparison_text(comparison: Mapping[str, Any]) -> str:
    """The table of a comparison stored as a mapping (``RunResult.comparison``)."""
    return Comparison.from_dict(comparison).table()


def _fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"


def _delta(r: Row) -> str:
    if r.delta is None:
        return ""
    if math.isinf(r.delta):
        return "+inf" if r.delta > 0 else "-inf"
    return f"{r.delta:+.1%}" if r.tolerance.relative else f"{r.delta:+.4g}"


def compare(now: Mapping[str, Any], baseline: Mapping[str, Any], *,
            tolerances: Mapping[str, Any] | None = None, name: str = "baseline",
            test: str | None = None, warnings: Sequence[str] = ()) -> Comparison:
    """Judge ``now`` against ``baseline``: each a baseline entry
    (:func:`~pytest_ctxplat.report.baseline.entry_from_result`) or a result JSON
    mapping (samples are then read from its records). ``tolerances`` override the
    defaults by metric or family (checked with :func:`parse_tolerances`)."""
    overrides = parse_tolerances(tolerances or {}, f"tolerances of {name!r}")
    fig_now, fig_base = _figures(now), _figures(baseline)
    s_now, s_base = _samples(now), _samples(baseline)
    metrics = [*COMPARED, *sorted(k for k in fig_base.keys() | fig_now.keys()
                                  if k not in COMPARED)]
    rows = []
    for metric in metrics:
        b, n = fig_base.get(metric), fig_now.get(metric)
        if b is None and n is None:
            continue
        sample = COMPARED.get(metric, ("other", None))[1]
        pair = (s_base.get(sample, []), s_now.get(sample, [])) if sample else None
        rows.append(_row(metric, b, n, _tolerance(metric, overrides), pair))
    detectable = {k: detectable_slowdown(s_base.get(k, []), s_now.get(k, []))
                  for k in ("ttft_ms", "e2e_ms")}
    return Comparison(baseline=name, test=test or str(now.get("name") or now.get("test")),
                      rows=tuple(rows), warnings=tuple(warnings), detectable=detectable,
                      samples=(len(s_base.get("errors", [])), len(s_now.get("errors", []))))


def _samples(entry: Mapping[str, Any]) -> dict[str, list[float]]:
    found = entry.get("samples")
    if isinstance(found, Mapping):
        return {k: [float(x) for x in v] for k, v in found.items()}
    return samples_from_records(entry.get("records") or ())
