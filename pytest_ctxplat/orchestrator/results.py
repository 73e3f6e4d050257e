"""Assembling a :class:`~pytest_ctxplat.report.result.RunResult` from request records
and two metric snapshots, and the failure message of a breached SLO."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..report import stats
from ..report.records import RequestRecord
from ..report.result import HitRates, RunResult, ServerMetrics
from ..servers.scrape import MetricsSnapshot, server_delta
from ..slo import SLOSpec, evaluate
from ..workload.spec import WorkloadSpec

__all__ = ["NOT_A_CAPACITY_RUN", "build_result", "format_breach"]

NOT_A_CAPACITY_RUN = ("not a capacity run: min_sustained_users needs closed-loop users "
                      "without stages or ramp_s (the controller then starts with "
                      "defaults), or set load.controller in the workload, or use a sweep")


def build_result(*, name: str, target: Mapping[str, Any], spec: WorkloadSpec, seed: int,
                 started_at: str, wall_s: float, records: Sequence[RequestRecord],
                 before: MetricsSnapshot | None, after: MetricsSnapshot | None,
                 peaks: Mapping[str, float] | None = None,
                 timeline: Sequence[Mapping[str, float]] = (), slo_spec: SLOSpec | None = None,
                 notes: Mapping[str, str] | None = None, interrupted: bool = False,
                 incomplete: str | None = None, server_block_size: int = 1,
                 designed_variants: Mapping[str, Sequence[int]] | None = None,
                 capacity: Mapping[str, Any] | None = None,
                 judged_records: Sequence[RequestRecord] | None = None) -> RunResult:
    """Assemble a :class:`RunResult` from request records and two ``/metrics`` snapshots
    (either may be None when the server has no metrics). Used by HTTP runs and by the
    in-process simulator alike. ``designed_variants`` (``Runner.designed_variants``) adds
    designed hit rates for a TTL or capacity as ``hit_rate.designed_ttl_<s>s`` /
    ``hit_rate.designed_cap_<tokens>`` observed metrics. ``incomplete`` says why the run
    ended before its bound (the verdict is then ``incomplete``). ``capacity`` is the
    SLO-governed controller's report (observed as ``capacity.sustained_users``); then
    ``judged_records`` (the requests at the sustained level) give the observed figures
    the objectives are judged on, not the whole run with its probes."""
    records = tuple(records)
    summary = stats.summarize(records, wall_s)
    delta = server_delta(before, after, peaks) if before is not None and after is not None \
        else None
    rates, rate_notes = stats.hit_rates(records, delta)
    if designed_variants:
        rates.update(stats.designed_variant_rates(records, designed_variants))
    rate_notes.update(notes or {})
    good = stats.goodput(records, slo_spec.good_thresholds()) if slo_spec else None
    observed = stats.observed_metrics(summary, rates, good)
    if capacity is not None:
        observed = _at_capacity(observed, capacity, judged_records or (), slo_spec)
    missing = {}
    if not any(r.ok for r in records):
        missing = {k: "no successful requests" for k, v in observed.items() if v is None}
    missing.update(rate_notes)
    if capacity is None:
        missing["capacity.sustained_users"] = NOT_A_CAPACITY_RUN
    verdict = evaluate(slo_spec, observed, missing, incomplete) if slo_spec is not None \
        else None
    server_metrics = None
    if delta is not None:
        server_metrics = ServerMetrics(prefix_hit_rate=delta.get("prefix_hit_rate"),
                                       external_hit_rate=delta.get("external_hit_rate"),
                                       figures={k: v for k, v in delta.items()
                                                if k not in ("prefix_hit_rate",
                                                             "external_hit_rate")})
    target = dict(target)
    target["server_block_size"] = server_block_size
    errors = [f"{r.session_id}#{r.index}: {r.error}" for r in records if r.error][:10]
    return RunResult(name=name, target=target, workload=spec.describe(), seed=seed,
                     started_at=started_at, wall_s=wall_s, metrics=summary,
                     hit_rates=HitRates(designed=rates["designed"], request=rates["request"],
                                        server=rates["server"], notes=rate_notes),
                     server=server_metrics, observed=observed, slo=slo_spec, verdict=verdict,
                     records=records, timeline=tuple(timeline), interrupted=interrupted,
                     incomplete=incomplete, errors_sample=tuple(errors),
                     capacity=capacity)


def _at_capacity(observed: Mapping[str, float | None], capacity: Mapping[str, Any],
                 judged: Sequence[RequestRecord], slo_spec: SLOSpec | None
                 ) -> dict[str, float | None]:
    """Observed figures of a capacity run: those of the requests at the sustained level
    (server counters stay run-wide), and ``capacity.sustained_users``."""
    out = dict(observed)
    if judged:
        rates, _ = stats.hit_rates(judged, None)
        rates["server"] = observed.get("hit_rate.server")
        good = stats.goodput(judged, slo_spec.good_thresholds()) if slo_spec else None
        out.update(stats.observed_metrics(stats.summarize(judged, 0.0), rates, good))
    out["capacity.sustained_users"] = capacity["sustained_users"]
    return out


def format_breach(result: RunResult) -> str:
    """The failure message of a run that did not pass: the verdict table first, then a
    few lines of cause (outcomes, the first errors, the end of a dead server's log)."""
    v = result.verdict
    assert v is not None
    head = (f"run incomplete ({v.incomplete}) for {result.name}" if v.incomplete
            else f"SLO breached ({len(v.failed)} of {len(v.checks)} objectives) for "
                 f"{result.name}")
    lines = [head, "", v.table(), "", _context_line(result)]
    if result.errors_sample:
        lines += ["first errors:", *("  " + e for e in result.errors_sample[:3])]
    log_tail = result.target.get("log_tail")
    if log_tail:
        lines += ["server log tail:", *str(log_tail).splitlines()[-10:]]
    return "\n".join(lines)


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
