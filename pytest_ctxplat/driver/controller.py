"""The SLO-governed controller: finds and holds the most closed-loop users that meet
every objective of the test (capacity at the SLO).

The runner starts ``max_users`` user tasks, but only the first ``active`` may send. The
controller sets ``active``: after each change it waits ``cooldown_s`` (and for the
requests sent before the change to end, at most ``window_s`` longer), then judges each
window of requests that completed since (and were sent after the cooldown) against the
test's objectives with :func:`~pytest_ctxplat.slo.evaluate`:

- a passing window grows the users in proportion to the smallest margin (the headroom),
  by at least one and at most ``step_max``, never to a level known to fail;
- a breach backs off in proportion to how far the window missed, never below the
  highest level that passed; a growth step that raised output tokens/s by less than
  ``plateau_gain`` times the share of users it added (a throughput plateau) backs off
  to the level before it;
- a level with no room to grow that passes ``hold_windows`` windows in a row is the
  sustained capacity (stop: converged, or max_users reached).

The search also stops at the run's bound (``duration_s``, ``max_requests``), when the
workload runs out of sessions, or when one user already breaches (the capacity is 0).
:class:`CapacitySearch` holds the decisions (no clock, no I/O; testable on its own),
:func:`govern` drives it on the runner's clock.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Protocol

from ..report import stats
from ..report.records import RequestRecord
from ..slo import SESSION_KEYS, SLOSpec, evaluate
from ..workload.load import ControllerConfig
from ..workload.spec import WorkloadSpec

__all__ = ["CapacitySearch", "Governed", "WindowFigures", "controller_config",
           "govern", "window_figures"]


def controller_config(workload: WorkloadSpec, slo: SLOSpec | None) -> ControllerConfig | None:
    """The controller a run uses: the workload's ``load.controller``; else, when the
    SLO gates on ``min_sustained_users`` and the workload is a closed loop without
    stages or a ramp, defaults that can reach twice the gate (or the workload's users,
    whichever is more); else None (no capacity run)."""
    load = workload.load
    if load.controller is not None:
        return load.controller
    if slo is None or slo.min_sustained_users is None:
        return None
    if load.open_loop or load.stages or load.ramp_s:
        return None
    return ControllerConfig(max_users=max(workload.users, 2 * slo.min_sustained_users))


def window_spec(slo: SLOSpec | None) -> SLOSpec:
    """The objectives one window is judged on: all but the capacity gate itself and a
    hit rate read from server counters (a window has none)."""
    if slo is None:
        return SLOSpec()
    changes: dict[str, Any] = {"min_sustained_users": None,
                               **dict.fromkeys(SESSION_KEYS)}  # sessions span windows
    if slo.cache_hit_source == "server":
        changes["cache_hit_rate_min"] = None
    return dataclasses.replace(slo, **changes)


@dataclasses.dataclass(frozen=True, kw_only=True)
class WindowFigures:
    """One judged window: when it closed, at which level, what it measured."""

    t: float
    active_users: int
    duration_s: float
    requests: int
    output_tokens: int
    good_requests: int | None
    ttft_p95_ms: float | None
    passed: bool
    headroom: float
    breached: tuple[str, ...] = ()

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.duration_s if self.duration_s > 0 else 0.0


def window_figures(records: Sequence[RequestRecord], spec: SLOSpec, *, t: float,
                   active_users: int, duration_s: float) -> WindowFigures:
    """Judge the completed ``records`` of one window against ``spec``
    (see :func:`window_spec`). ``headroom`` is the smallest relative margin (negative:
    by how much the window missed); a window without a completed request fails."""
    summary = stats.summarize(records, duration_s)
    rates, notes = stats.hit_rates(records, None)
    thresholds = spec.good_thresholds()
    good = stats.goodput(records, thresholds) if thresholds else None
    observed = stats.observed_metrics(summary, rates, good)
    verdict = evaluate(spec, observed, notes)
    margins = [c.margin for c in verdict.checks
               if c.margin is not None and not math.isinf(c.margin)]
    failed = tuple(c.key for c in verdict.checks if not c.passed)
    ok = [r for r in records if r.ok]
    passed = bool(ok) and not failed
    if not ok:
        failed = (*failed, "no request completed")
    headroom = min(margins) if margins else (math.inf if passed else -0.5)
    ttft = summary.get("ttft_ms")
    return WindowFigures(
        t=t, active_users=active_users, duration_s=duration_s, requests=len(records),
        output_tokens=sum(r.output_tokens for r in ok),
        good_requests=None if good is None else round(good * len(records)),
        ttft_p95_ms=ttft["p95"] if ttft else None, passed=passed,
        headroom=headroom if passed else min(headroom, 0.0), breached=failed)


class CapacitySearch:
    """The controller's decisions, one per judged window (see the module docstring).
    ``level`` is the number of active users it wants now; ``stop_reason`` is set once
    it has finished."""

    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.level = config.start_users
        self.passed_levels: set[int] = set()
        self.lowest_failed: int | None = None
        self.held = 0
        self.grown_from: int | None = None
        self.tps_at: dict[int, float] = {}
        self.step_cap = config.step_max  # halved by each plateau (a bisection)
        self.windows: list[WindowFigures] = []
        self.trajectory: list[dict[str, Any]] = []
        self.stop_reason: str | None = None
        self.sustained: int | None = None
        self._passed_records: list[tuple[int, Sequence[RequestRecord]]] = []

    @property
    def highest_passed(self) -> int:
        return max(self.passed_levels, default=0)

    def _ceiling(self) -> int:
        top = self.config.max_users
        return top if self.lowest_failed is None else min(top, self.lowest_failed - 1)

    def decide(self, w: WindowFigures, records: Sequence[RequestRecord] = ()) -> str:
        """Take window ``w`` (judged at ``self.level``, on ``records``) and say what to
        do next."""
        self.windows.append(w)
        if w.passed:
            self._passed_records.append((w.active_users, records))
        decision = self._on_pass(w) if w.passed else self._on_breach(w)
        self.trajectory.append({"t": round(w.t, 3), "active_users": w.active_users,
                                "ttft_p95_ms": w.ttft_p95_ms,
                                "output_tokens_per_s": w.output_tokens_per_s,
                                "passed": w.passed, "decision": decision})
        return decision

    def _on_pass(self, w: WindowFigures) -> str:
        level, cfg = self.level, self.config
        grown_from, self.grown_from = self.grown_from, None
        before = self.tps_at.get(grown_from) if grown_from is not None else None
        if cfg.plateau_gain > 0 and grown_from is not None and before is not None and \
                w.output_tokens_per_s < \
                before * (1 + cfg.plateau_gain * (level / grown_from - 1)):
            gain = w.output_tokens_per_s / before - 1 if before else 0.0
            self._failed_at(level)
            self.step_cap = max(1, (level - grown_from) // 2)
            self.level = grown_from
            self.held = 0
            return f"back off: throughput plateau ({gain:+.1%} tok/s)"
        self.passed_levels.add(level)
        self.tps_at[level] = w.output_tokens_per_s
        ceiling = self._ceiling()
        if level < ceiling:
            room = level * w.headroom if math.isfinite(w.headroom) else cfg.step_max
            step = max(1, min(self.step_cap, math.floor(room)))
            self.level = min(level + step, ceiling)
            self.grown_from = level
            self.held = 0
            return "grow"
        self.held += 1
        if self.held >= cfg.hold_windows:
            at_max = level >= cfg.max_users
            self.finish("max_users reached" if at_max else "converged", sustained=level)
            return f"stop: {self.stop_reason}"
        return "hold"

    def _failed_at(self, level: int) -> None:
        self.lowest_failed = level if self.lowest_failed is None else \
            min(self.lowest_failed, level)
        self.passed_levels = {p for p in self.passed_levels if p < level}

    def _on_breach(self, w: WindowFigures) -> str:
        level = self.level
        self.grown_from = None
        self.held = 0
        self._failed_at(level)
        what = ", ".join(w.breached)
        if level <= 1:
            self.finish("breach at minimum (1 user)", sustained=0)
            return f"stop: breach at 1 user ({what})"
        shrink = math.floor(level * (1 + max(w.headroom, -0.5)))
        self.level = max(1, self.highest_passed, min(level - 1, shrink))
        return f"back off: breach ({what})"

    def finish(self, reason: str, sustained: int | None = None) -> None:
        """Stop the search; without ``sustained`` (the run's bound came first) the
        sustained level is the highest that passed below every level that failed."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.sustained = self.highest_passed if sustained is None else sustained

    def sustained_records(self) -> list[RequestRecord]:
        """The requests of the passing windows at the sustained level: what the run's
        objectives are judged on (not the probes above or below it)."""
        level = self.sustained if self.sustained is not None else self.highest_passed
        return [r for lv, recs in self._passed_records if lv == level for r in recs]

    def report(self) -> dict[str, Any]:
        """The result's ``capacity`` section."""
        sustained = self.sustained if self.sustained is not None else self.highest_passed
        at = [w for w in self.windows if w.passed and w.active_users == sustained]
        span = sum(w.duration_s for w in at)
        requests = sum(w.requests for w in at)
        good = [w.good_requests for w in at if w.good_requests is not None]
        return {
            "sustained_users": sustained,
            "interval": {"highest_passed": self.highest_passed or None,
                         "lowest_failed": self.lowest_failed},
            "stop_reason": self.stop_reason or "not finished",
            "windows_at_sustained": len(at),
            "output_tokens_per_s": sum(w.output_tokens for w in at) / span if span else None,
            "requests_per_s": requests / span if span else None,
            "goodput": sum(good) / requests if good and requests else None,
            "ttft_p95_ms": max((w.ttft_p95_ms for w in at if w.ttft_p95_ms is not None),
                               default=None),
            "config": dataclasses.asdict(self.config),
            "trajectory": list(self.trajectory),
        }


class Governed(Protocol):
    """What the controller needs of the runner."""

    records: list[RequestRecord]

    def now(self) -> float: ...

    async def wait(self, seconds: float) -> str | None:
        """Sleep; None, or why the run is over (the controller stops then)."""
        ...

    def set_active(self, users: int) -> None: ...

    def end_search(self) -> None:
        """The search finished: stop starting requests (a complete run)."""
        ...


async def govern(run: Governed, search: CapacitySearch, slo: SLOSpec | None) -> None:
    """Drive ``search`` on ``run``'s clock until it stops or the run is over."""
    cfg = search.config
    spec = window_spec(slo)
    while search.stop_reason is None:
        level = search.level
        run.set_active(level)
        over = await _cool_down(run, cfg)
        open_t = since = run.now()
        while over is None and search.level == level and search.stop_reason is None:
            over = await run.wait(cfg.window_s)
            recs = _window(run.records, open_t, since)
            extra = 0
            while over is None and len(recs) < cfg.min_requests and extra < 3:
                over = await run.wait(cfg.window_s)
                recs = _window(run.records, open_t, since)
                extra += 1
            if over is not None:
                break
            now = run.now()
            search.decide(window_figures(recs, spec, t=now, active_users=level,
                                         duration_s=now - since), recs)
            since = now
        if over is not None:
            search.finish(over)
    run.end_search()


async def _cool_down(run: Governed, cfg: ControllerConfig) -> str | None:
    """Wait ``cooldown_s``, then until the requests sent before the change have ended
    (a backlog left by a breach would otherwise be blamed on the new level), at most
    ``window_s`` longer."""
    changed = run.now()
    over = await run.wait(cfg.cooldown_s)
    waited = 0.0
    step = max(cfg.window_s / 20, 0.05)
    while over is None and waited < cfg.window_s and any(
            r.end_s is None and r.start_s < changed for r in reversed(run.records)):
        over = await run.wait(step)
        waited += step
    return over


def _window(records: Sequence[RequestRecord], sent_after: float, ended_after: float
            ) -> list[RequestRecord]:
    """Requests sent at or after ``sent_after`` that ended after ``ended_after``."""
    return [r for r in records if r.start_s >= sent_after and r.end_s is not None
            and r.end_s > ended_after]
