"""Assembling a :class:`~pytest_ctxplat.report.result.RunResult` from request records
and two metric snapshots, and the failure message of a breached SLO."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from tabulate import tabulate

from ..report import sessions, stats
from ..report.judging import add_figures, judge_inputs
from ..report.records import RequestRecord
from ..report.result import HitRates, RunResult, ServerMetrics
from ..report.timing import histogram_section, invalid_reason, timing_section
from ..servers.scrape import TTFT_HISTOGRAM, MetricsSnapshot, histogram_delta, server_delta
from ..servers.tiers import TierHits, tier_hits
from ..slo import SLOSpec, Verdict, evaluate
from ..workload.spec import WorkloadSpec

__all__ = ["NOT_A_CAPACITY_RUN", "build_result", "format_breach", "measurement_timing",
           "tier_table"]

NOT_A_CAPACITY_RUN = ("not a capacity run: min_sustained_users needs closed-loop users "
                      "without stages or ramp_s (the controller then starts with "
                      "defaults), or set load.controller in the workload, or use a sweep")
NOT_A_KNEE_SEARCH = ("not a knee search: knee_min_tokens is judged on the result of "
                     "find_knees (a tier_spill workload played at growing working sets)")


def build_result(*, name: str, target: Mapping[str, Any], spec: WorkloadSpec, seed: int,
                 started_at: str, wall_s: float, records: Sequence[RequestRecord],
                 before: MetricsSnapshot | None, after: MetricsSnapshot | None,
                 peaks: Mapping[str, float] | None = None,
                 timeline: Sequence[Mapping[str, float]] = (), slo_spec: SLOSpec | None = None,
                 notes: Mapping[str, str] | None = None, interrupted: bool = False,
                 incomplete: str | None = None, server_block_size: int = 1,
                 designed_variants: Mapping[str, Sequence[int]] | None = None,
                 earlier_runs: Sequence[Sequence[RequestRecord]] = (),
                 policy: str | None = None,
                 capacity: Mapping[str, Any] | None = None,
                 judged_records: Sequence[RequestRecord] | None = None) -> RunResult:
    """Assemble a :class:`RunResult` from request records and two ``/metrics`` snapshots
    (either may be None when the server has no metrics). Used by HTTP runs and by the
    in-process simulator alike. ``designed_variants`` (``Runner.designed_variants``) adds
    designed hit rates for a TTL or capacity as ``hit_rate.designed_ttl_<s>s`` /
    ``hit_rate.designed_cap_<tokens>`` observed metrics. ``incomplete`` says why the run
    ended before its bound (the verdict is then ``incomplete``). ``sessions`` (the
    result's section, :mod:`~pytest_ctxplat.report.sessions`) covers the judged window.

    ``observed`` is judged on the measurement window (:mod:`~pytest_ctxplat.report.window`)
    of this run pooled with ``earlier_runs`` (the records of earlier runs of the same
    workload: ``repeat``, reruns); ``metrics`` describe this run whole; hit rates and
    the error rate cover every run whole. ``policy`` overrides the spec's
    ``on_inconclusive``. ``capacity`` is the SLO-governed controller's report (observed
    as ``capacity.sustained_users``); then ``judged_records`` (the requests at the
    sustained level) are the window the objectives are judged on, not the whole run
    with its probes."""
    records = tuple(records)
    runs = [*earlier_runs, records]
    every = tuple(r for run in runs for r in run)
    summary = stats.summarize(records, wall_s)
    delta = server_delta(before, after, peaks) if before is not None and after is not None \
        else None
    rates, rate_notes = stats.hit_rates(every, delta)
    if designed_variants:
        rates.update(stats.designed_variant_rates(records, designed_variants))
    rate_notes.update(notes or {})
    judge_spec = slo_spec or SLOSpec()
    at_capacity = capacity is not None and bool(judged_records)
    # a capacity run is judged at its sustained level only, not on the probes above it
    judge_runs = [tuple(judged_records or ())] if at_capacity else runs
    window = judge_inputs(judge_runs, judge_spec, None if at_capacity else spec.bound_s)
    judged = window.judged
    good = stats.goodput(judged, slo_spec.good_thresholds()) if slo_spec else None
    observed = stats.observed_metrics(stats.summarize(judged, wall_s), rates, good)
    observed["error_rate"] = stats.summarize(every, wall_s)["error_rate"] if earlier_runs \
        else summary["error_rate"]
    if capacity is not None:
        observed = _at_capacity(observed, capacity, judged_records or ())
    session_figures = sessions.section(window.kept_runs)
    observed.update(sessions.observed(session_figures))
    add_figures(window, judge_runs, judge_spec, observed)
    missing = _missing(observed, every, judged, window.section,
                       sessions.notes(session_figures))
    missing.update(rate_notes)
    tiers = _tiers(before, after, observed, missing, slo_spec)
    if capacity is None:
        missing["capacity.sustained_users"] = NOT_A_CAPACITY_RUN
    missing["knee_tokens.hbm"] = NOT_A_KNEE_SEARCH
    verdict = None
    if slo_spec is not None:
        verdict = evaluate(slo_spec, observed, {**window.notes, **missing}, incomplete,
                           intervals=window.intervals, rate_intervals=window.rate_intervals,
                           periods=window.periods, policy=policy)
    timing = measurement_timing(judged, before, after, slo_spec)
    verdict = _with_validity(verdict, timing, judge_spec)
    return RunResult(name=name, target=_target(target, server_block_size),
                     workload=spec.describe(), seed=seed, started_at=started_at,
                     wall_s=wall_s, metrics=summary,
                     hit_rates=HitRates(designed=rates["designed"], request=rates["request"],
                                        server=rates["server"], notes=rate_notes),
                     server=_server(delta), observed=observed, slo=slo_spec, verdict=verdict,
                     records=every, timeline=tuple(timeline), interrupted=interrupted,
                     incomplete=incomplete, window=window.section, capacity=capacity,
                     sessions=session_figures, timing=timing,
                     tiers=tiers.to_dict() if tiers.engine != "unknown" else None,
                     errors_sample=tuple(f"{r.session_id}#{r.index}: {r.error}"
                                         for r in every if r.error)[:10])


def measurement_timing(records: Sequence[RequestRecord], before: MetricsSnapshot | None,
                       after: MetricsSnapshot | None, slo_spec: SLOSpec | None
                       ) -> dict[str, Any] | None:
    """The result's ``timing`` section over ``records`` (the judged window): the
    client's TTFT against the server's model time per request (the simulator), judged
    against the spec's bounds; else against
    the server's TTFT histogram (vLLM), for information; None when neither is known."""
    spec = slo_spec or SLOSpec()
    section = timing_section(records, spec.timing_skew_max_ms, spec.timing_skew_max_ratio)
    if section is not None or before is None or after is None:
        return section
    hist = histogram_delta(before, after, TTFT_HISTOGRAM)
    return None if hist is None else histogram_section(records, *hist)


def _with_validity(verdict: Verdict | None, timing: Mapping[str, Any] | None,
                   spec: SLOSpec) -> Verdict | None:
    """``verdict`` made an invalid measurement when the timings are not valid and an
    objective depends on them."""
    invalid = invalid_reason(timing)
    if verdict is None or invalid is None or not spec.judges_timing():
        return verdict
    return dataclasses.replace(verdict, invalid=invalid)


def _missing(observed: Mapping[str, float | None], every: Sequence[RequestRecord],
             judged: Sequence[RequestRecord], window: Mapping[str, Any],
             notes: Mapping[str, str]) -> dict[str, str]:
    """Why each unmeasured figure is missing: no successful request at all, none in the
    window, else the figure's own note (``notes``: the session figures')."""
    missing: dict[str, str] = {}
    if not any(r.ok for r in every):
        missing = {k: "no successful requests" for k, v in observed.items() if v is None}
    elif not any(r.ok for r in judged):
        missing = {k: f"no successful requests in the measurement window "
                      f"({window['excluded_warmup']} warm-up, "
                      f"{window['excluded_cooldown']} cool-down excluded)"
                   for k, v in observed.items() if v is None}
    for k, v in notes.items():
        missing.setdefault(k, v)
    return missing


def _tiers(before: MetricsSnapshot | None, after: MetricsSnapshot | None,
           observed: dict[str, float | None], missing: dict[str, str],
           slo_spec: SLOSpec | None) -> TierHits:
    """Hits per tier: adds ``tier_hit_rate.<tier>`` / ``external_hit_rate`` to
    ``observed`` and, for each judged tier without a figure, why to ``missing``."""
    if before is None or after is None:
        tiers = TierHits("unknown", note="the server exposes no /metrics")
    else:
        tiers = tier_hits(before, after)
    observed.update(tiers.observed())
    for tier in (slo_spec.tier_hit_rate_min or {}) if slo_spec else ():
        if observed.get(f"tier_hit_rate.{tier}") is None:
            missing[f"tier_hit_rate.{tier}"] = tiers.missing_note(tier)
    if tiers.external_hit_rate is None:
        missing.setdefault("external_hit_rate", "the server reports no external prefix "
                                                "cache queries (no KV connector)")
    return tiers


def _target(target: Mapping[str, Any], server_block_size: int) -> dict[str, Any]:
    out = dict(target)
    out["server_block_size"] = server_block_size
    return out


def _server(delta: Mapping[str, Any] | None) -> ServerMetrics | None:
    if delta is None:
        return None
    return ServerMetrics(prefix_hit_rate=delta.get("prefix_hit_rate"),
                         external_hit_rate=delta.get("external_hit_rate"),
                         figures={k: v for k, v in delta.items()
                                  if k not in ("prefix_hit_rate", "external_hit_rate")})


def _at_capacity(observed: Mapping[str, float | None], capacity: Mapping[str, Any],
                 judged: Sequence[RequestRecord]) -> dict[str, float | None]:
    """Observed figures of a capacity run: the request-side hit rates of the requests at
    the sustained level (server counters stay run-wide), and
    ``capacity.sustained_users``."""
    out = dict(observed)
    if judged:
        rates, _ = stats.hit_rates(judged, None)
        out["hit_rate.designed"] = rates["designed"]
        out["hit_rate.request"] = rates["request"]
    out["capacity.sustained_users"] = capacity["sustained_users"]
    return out


def format_breach(result: RunResult) -> str:
    """The failure message of a run that did not pass: the verdict table first, then a
    few lines of cause (outcomes, the first errors, the end of a dead server's log)."""
    v = result.verdict
    assert v is not None
    if v.incomplete:
        head = f"run incomplete ({v.incomplete}) for {result.name}"
    elif v.invalid:
        head = f"invalid measurement ({v.invalid}) for {result.name}"
    elif v.status == "inconclusive":
        head = (f"SLO inconclusive ({len(v.inconclusive)} of {len(v.checks)} objectives: "
                f"the {v.confidence:.0%} interval straddles the target) for {result.name}")
    else:
        head = (f"SLO breached ({len(v.failed)} of {len(v.checks)} objectives) for "
                f"{result.name}")
    lines = [head, "", v.table(), "", _context_line(result)]
    if result.slo is not None and result.slo.tier_hit_rate_min and result.tiers:
        lines += ["", tier_table(result.tiers)]
    if result.errors_sample:
        lines += ["first errors:", *("  " + e for e in result.errors_sample[:3])]
    log_tail = result.target.get("log_tail")
    if log_tail:
        lines += ["server log tail:", *str(log_tail).splitlines()[-10:]]
    return "\n".join(lines)


def tier_table(tiers: Mapping[str, Any]) -> str:
    """Hits per tier (a result's ``tiers`` section) as a text table."""
    def f(v: Any, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)
    rows = [[name, f(t["tokens"], ".0f"), f(t["hit_rate"], ".1%"), f(t["bytes_loaded"], ".3g"),
             f(t["load_s"], ".3g")] for name, t in tiers.get("tiers", {}).items()]
    return f"hits per tier ({tiers.get('engine')}):\n" + tabulate(
        rows, headers=["tier", "tokens", "hit rate", "bytes loaded", "load s"])


def _context_line(result: RunResult) -> str:
    m = result.metrics
    h = result.hit_rates

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1%}"

    outcomes = ", ".join(f"{n} {k}" for k, n in (m.get("outcomes") or {}).items() if n)
    return (f"{m['requests']} requests ({outcomes or 'none'}) in "
            f"{m['duration_s'] or 0:.1f} s against {result.target.get('launcher')} "
            f"{result.target.get('url')}; hit rate designed {pct(h.designed)} / request "
            f"{pct(h.request)} / server {pct(h.server)}")
