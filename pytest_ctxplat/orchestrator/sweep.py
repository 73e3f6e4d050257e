"""Sweeps: one workload played once per load point (users, or open-loop arrival rates),
same seed, and the curve of the points in one result.

Each point is judged against the test's objectives (all but the capacity gate); the
largest passing point is the sweep's capacity (``capacity.sustained_users``, or
``capacity.sustained_rate_per_s`` for rates), which ``min_sustained_users`` gates on.
The combined result carries the figures and records of that point (of the first point
when none passes), the ``sweep`` points and the ``capacity`` section.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from ..config import FieldError, Validated, build, replace, setting
from ..errors import ConfigError
from ..report.result import RunResult
from ..report.stats import SAMPLED
from ..slo import SLOSpec, Verdict, evaluate
from ..workload.spec import WorkloadSpec

__all__ = ["SweepSpec", "plan_sweep", "point_overrides", "point_slo", "run_sweep", "sweep_result",
           "sweep_spec"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepSpec(Validated):
    """The ``sweep`` marker's keys: ``users`` (closed-loop users per point) or ``rates``
    (open-loop session arrivals per second per point), one of them."""

    users: tuple[int, ...] = setting((), gt=0, doc="closed-loop users of each point")
    rates: tuple[float, ...] = setting((), gt=0, doc="open-loop arrivals per second of "
                                       "each point")

    def validate(self) -> None:
        if bool(self.users) == bool(self.rates):
            raise FieldError("users", "give the points as users=[...] or rates=[...] "
                                      "(one of them, not empty)")

    @property
    def variable(self) -> str:
        return "users" if self.users else "rate_per_s"

    @property
    def points(self) -> tuple[float, ...]:
        return tuple(self.users) if self.users else tuple(self.rates)


def point_overrides(spec: WorkloadSpec, sweep: SweepSpec, value: float) -> dict[str, Any]:
    """The workload overrides of one point; a workload whose load shape would ignore
    them (stages, a controller) is a ConfigError saying what to remove."""
    load = spec.load
    if sweep.users:
        if load.controller is not None or load.stages or load.open_loop:
            raise ConfigError("sweep(users=...): the workload's load sets the users itself "
                              "(load.controller, load.stages or open-loop arrivals); "
                              "remove them or sweep rates=[...]")
        return {"users": int(value)}
    if load.controller is not None:
        raise ConfigError("sweep(rates=...): the workload's load.controller governs "
                          "closed-loop users; remove it")
    return {"load": {"arrival": load.arrival if load.open_loop else "poisson",
                     "rate_per_s": float(value)}}


def point_slo(slo: SLOSpec | None) -> SLOSpec | None:
    """What each point is judged on: every objective but the capacity gate."""
    if slo is None or slo.min_sustained_users is None:
        return slo
    return dataclasses.replace(slo, min_sustained_users=None)


def _point(variable: str, value: float, r: RunResult) -> dict[str, Any]:
    o, m = r.observed, r.metrics
    v = r.verdict
    return {
        variable: value,
        "profile": r.target.get("profile"),
        "requests": m.get("requests"),
        "output_tokens_per_s": m.get("output_tokens_per_s"),
        "ttft_p95_ms": o.get("ttft_ms.p95"),
        "decode_tps_p50": o.get("decode_tps.p50"),
        "hit_rate_designed": r.hit_rates.designed,
        "hit_rate_request": r.hit_rates.request,
        "hit_rate_server": r.hit_rates.server,
        "verdict": None if v is None else v.status,
        "failed": [] if v is None else [c.key for c in v.failed],
    }


def sweep_result(name: str, sweep: SweepSpec, results: Sequence[RunResult],
                 slo: SLOSpec | None) -> RunResult:
    """One result of a sweep's point results (in point order); see the module
    docstring."""
    variable = sweep.variable
    points = [_point(variable, v, r) for v, r in zip(sweep.points, results, strict=True)]
    passing = [i for i, r in enumerate(results) if r.passed and not r.incomplete]
    best = max(passing, key=lambda i: sweep.points[i], default=None)
    rep = results[0 if best is None else best]
    top = None if best is None else sweep.points[best]
    above = [v for i, v in enumerate(sweep.points) if i not in passing and
             (top is None or v > top)]
    key = "sustained_users" if sweep.users else "sustained_rate_per_s"
    sustained: float = int(top or 0) if sweep.users else float(top or 0.0)
    capacity: dict[str, Any] = {
        key: sustained,
        "interval": {"highest_passed": top, "lowest_failed": min(above, default=None)},
        "stop_reason": "sweep",
        "output_tokens_per_s": rep.metrics.get("output_tokens_per_s") if top else None,
        "requests_per_s": rep.metrics.get("requests_per_s") if top else None,
        "goodput": rep.observed.get("goodput") if top else None,
        "ttft_p95_ms": rep.observed.get("ttft_ms.p95") if top else None,
    }
    observed: dict[str, float | None] = {**rep.observed, f"capacity.{key}": sustained}
    notes: dict[str, str] = dict(rep.hit_rates.notes)
    if not sweep.users:
        notes["capacity.sustained_users"] = ("a sweep of rates measures "
                                             "capacity.sustained_rate_per_s, not users")
    verdict = None if slo is None else _judge(slo, observed, notes, rep)
    return dataclasses.replace(rep, name=name, observed=observed, slo=slo, verdict=verdict,
                               capacity=capacity, sweep=tuple(points))


def _judge(slo: SLOSpec, observed: Mapping[str, float | None], notes: Mapping[str, str],
           rep: RunResult) -> Verdict:
    """The sweep's verdict: the point's own intervals and periods, with the capacity
    figure added."""
    checks = rep.verdict.checks if rep.verdict is not None else ()
    intervals = {c.metric: c.interval for c in checks
                 if c.interval is not None and c.metric.split(".")[0] in SAMPLED}
    rates = {c.metric: c.interval for c in checks
             if c.interval is not None and c.metric.split(".")[0] not in SAMPLED}
    periods = {c.metric: c.periods for c in checks if c.periods is not None}
    return evaluate(slo, observed, notes, rep.incomplete, intervals=intervals,
                    rate_intervals=rates, periods=periods)


def plan_sweep(spec: WorkloadSpec, sweep: SweepSpec, slo: SLOSpec | None, name: str
               ) -> list[tuple[WorkloadSpec, SLOSpec | None, str]]:
    """Each point's workload, objectives and run name (``NAME[users=8]``)."""
    out = []
    for value in sweep.points:
        label = f"{sweep.variable}={value:g}"
        point = replace(spec, point_overrides(spec, sweep, value), f"{name}: sweep {label}")
        out.append((point, point_slo(slo), f"{name}[{label}]"))
    return out


async def run_sweep(spec: WorkloadSpec, sweep: SweepSpec, slo: SLOSpec | None, name: str,
                    play_point: Callable[[WorkloadSpec, SLOSpec | None, str],
                                         Awaitable[RunResult]]) -> RunResult:
    """Play ``spec`` once per point with ``play_point(spec, slo, name)`` and combine."""
    results = [await play_point(*point) for point in plan_sweep(spec, sweep, slo, name)]
    return sweep_result(name, sweep, results, slo)


def sweep_spec(values: Mapping[str, Any], where: str) -> SweepSpec:
    """A :class:`SweepSpec` from marker keywords (errors name ``where`` and the key)."""
    return build(SweepSpec, values, where)
