"""Service-level objectives: the ``slo`` marker's keys, and judging a run against them.

:class:`SLOSpec` is a frozen keyword-only dataclass, so a typo in a key is an error, not
a silently ignored objective. :func:`evaluate` turns observed figures into a
:class:`Verdict`: one :class:`Check` per objective with target, observed value and
margin. An objective whose metric could not be measured fails, with the reason.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from tabulate import tabulate

from .config import FieldError, Validated, build, setting

__all__ = ["HIT_SOURCES", "SLO_METRICS", "Check", "SLOSpec", "Verdict", "evaluate", "parse_slo"]

HIT_SOURCES = ("designed", "request", "server")

# key -> (observed metric name, direction, unit). "max": observed <= target passes.
SLO_METRICS: dict[str, tuple[str, str, str]] = {
    "ttft_p50_ms": ("ttft_ms.p50", "max", "ms"),
    "ttft_p90_ms": ("ttft_ms.p90", "max", "ms"),
    "ttft_p95_ms": ("ttft_ms.p95", "max", "ms"),
    "ttft_p99_ms": ("ttft_ms.p99", "max", "ms"),
    "itl_p99_ms": ("itl_ms.p99", "max", "ms"),
    "e2e_p95_ms": ("e2e_ms.p95", "max", "ms"),
    "decode_tps_p10": ("decode_tps.p10", "min", "tok/s"),
    "decode_tps_p50": ("decode_tps.p50", "min", "tok/s"),
    "output_tokens_per_request_min": ("output_tokens.min", "min", "tok"),
    "cache_hit_rate_min": ("hit_rate.<source>", "min", ""),
    "error_rate_max": ("error_rate", "max", ""),
    "goodput_min": ("goodput", "min", ""),
    "min_sustained_users": ("capacity.sustained_users", "min", "users"),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SLOSpec(Validated):
    """Objectives of one test. Every field is optional; unset ones are not judged.

    Latency targets are upper bounds in milliseconds; ``decode_tps_*`` (output tokens per
    second of one request after its first token) and ``output_tokens_per_request_min``
    (the fewest output tokens any successful request returned) are lower bounds.
    ``cache_hit_rate_min`` is judged on ``cache_hit_source``: ``designed`` (from the
    workload plan), ``request`` (``usage.prompt_tokens_details.cached_tokens``) or
    ``server`` (``/metrics`` deltas). ``goodput_min`` is the share of requests that
    succeeded and met every ``good_*`` per-request threshold given.
    ``min_sustained_users`` gates on capacity: the users an SLO-governed controller (or a
    sweep) sustained while meeting every other objective.
    """

    ttft_p50_ms: float | None = setting(None, ge=0)
    ttft_p90_ms: float | None = setting(None, ge=0)
    ttft_p95_ms: float | None = setting(None, ge=0)
    ttft_p99_ms: float | None = setting(None, ge=0)
    itl_p99_ms: float | None = setting(None, ge=0)
    e2e_p95_ms: float | None = setting(None, ge=0)
    decode_tps_p10: float | None = setting(None, gt=0)
    decode_tps_p50: float | None = setting(None, gt=0)
    output_tokens_per_request_min: int | None = setting(None, ge=0)
    cache_hit_rate_min: float | None = setting(None, ge=0, le=1)
    cache_hit_source: str = setting("request", choices=HIT_SOURCES)
    error_rate_max: float | None = setting(None, ge=0, le=1)
    goodput_min: float | None = setting(None, ge=0, le=1)
    good_ttft_ms: float | None = setting(None, ge=0)
    good_e2e_ms: float | None = setting(None, ge=0)
    good_decode_tps: float | None = setting(None, gt=0)
    min_sustained_users: int | None = setting(None, ge=1)

    def validate(self) -> None:
        if self.goodput_min is not None and not self.good_thresholds():
            raise FieldError("goodput_min", "needs at least one per-request threshold: "
                                            "good_ttft_ms, good_e2e_ms or good_decode_tps")

    def good_thresholds(self) -> dict[str, float]:
        return {
            k: v
            for k, v in (
                ("good_ttft_ms", self.good_ttft_ms),
                ("good_e2e_ms", self.good_e2e_ms),
                ("good_decode_tps", self.good_decode_tps),
            )
            if v is not None
        }

    def objectives(self) -> dict[str, float]:
        """The judged keys (those in :data:`SLO_METRICS`) that are set."""
        return {k: float(getattr(self, k)) for k in SLO_METRICS if getattr(self, k) is not None}

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @staticmethod
    def valid_keys() -> list[str]:
        return [f.name for f in dataclasses.fields(SLOSpec)]


def parse_slo(values: Mapping[str, Any], where: str) -> SLOSpec:
    """Build an SLOSpec from marker kwargs (or ``--slo`` values); errors name ``where``,
    the key and what is valid."""
    return build(SLOSpec, values, where)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Check:
    """One judged objective."""

    key: str
    metric: str
    direction: str  # "max" or "min"
    target: float
    observed: float | None
    passed: bool
    note: str = ""

    @property
    def margin(self) -> float | None:
        """Relative headroom: positive means inside the objective."""
        if self.observed is None:
            return None
        if self.target == 0:
            return 0.0 if self.observed == self.target else (-math.inf if self.direction == "max"
                                                              else math.inf)
        if self.direction == "max":
            return (self.target - self.observed) / self.target
        return (self.observed - self.target) / self.target

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["margin"] = self.margin
        return d


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The judged objectives of one run. ``incomplete`` says why the run did not fill
    its measurement window (interrupted, the server died, a circuit breaker): such a
    verdict never passes, whatever the checks say."""

    checks: tuple[Check, ...]
    incomplete: str | None = None

    @property
    def passed(self) -> bool:
        return self.incomplete is None and all(c.passed for c in self.checks)

    @property
    def status(self) -> str:
        """``pass``, ``fail`` or ``incomplete``."""
        if self.incomplete is not None:
            return "incomplete"
        return "pass" if self.passed else "fail"

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def table(self) -> str:
        rows = []
        for c in self.checks:
            op = "<=" if c.direction == "max" else ">="
            margin = c.margin
            rows.append(
                [
                    c.key,
                    f"{op} {_fmt(c.target)}",
                    "n/a" if c.observed is None else _fmt(c.observed),
                    "" if margin is None or math.isinf(margin) else f"{margin:+.1%}",
                    "ok" if c.passed else "FAIL" + (f": {c.note}" if c.note else ""),
                ]
            )
        return tabulate(rows, headers=["metric", "target", "observed", "margin", "result"])

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "status": self.status, "incomplete": self.incomplete,
                "checks": [c.to_dict() for c in self.checks]}


def _fmt(v: float) -> str:
    if v == int(v) and abs(v) >= 1:
        return str(int(v))
    return f"{v:.4g}"


def evaluate(
    spec: SLOSpec, observed: Mapping[str, float | None], notes: Mapping[str, str] | None = None,
    incomplete: str | None = None,
) -> Verdict:
    """Judge ``observed`` (metric name -> value or None) against ``spec``.

    ``notes`` maps metric names to why they are missing (e.g. the server does not
    report ``cached_tokens``); a missing metric fails its objective with that note.
    ``incomplete`` (why the run ended early) makes the verdict ``incomplete``.
    """
    notes = notes or {}
    checks = []
    for key, target in spec.objectives().items():
        metric, direction, _unit = SLO_METRICS[key]
        if key == "cache_hit_rate_min":
            metric = f"hit_rate.{spec.cache_hit_source}"
        value = observed.get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            note = notes.get(metric, "not measured")
            checks.append(Check(key=key, metric=metric, direction=direction, target=target,
                                observed=None, passed=False, note=note))
            continue
        ok = value <= target if direction == "max" else value >= target
        checks.append(Check(key=key, metric=metric, direction=direction, target=target,
                            observed=float(value), passed=ok))
    return Verdict(tuple(checks), incomplete)
