"""Service-level objectives: the ``slo`` marker's keys, and judging a run against them.

:class:`SLOSpec` is a frozen keyword-only dataclass, so a typo in a key is an error, not
a silently ignored objective. :func:`evaluate` turns observed figures into a
:class:`Verdict`: one :class:`Check` per objective with target, observed value and
margin. An objective whose metric could not be measured fails, with the reason.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

from tabulate import tabulate

from .config import FieldError, Validated, build, setting

__all__ = ["ALL_TIER_NAMES", "GAP_BUCKET_NAMES", "HIT_SOURCES", "INCONCLUSIVE_POLICIES",
           "SESSION_KEYS", "SLO_METRICS", "TIER_NAMES", "Check", "SLOSpec", "Verdict",
           "evaluate", "metric_of", "parse_slo"]

HIT_SOURCES = ("designed", "request", "server")
# KV tier names per server kind (how each engine's /metrics names them: see
# pytest_ctxplat.servers.tiers); ``tier_hit_rate_min`` keys must be among them
TIER_NAMES: dict[str, tuple[str, ...]] = {
    "sim": ("hbm", "dram", "nvme", "disk", "remote"),
    "vllm": ("hbm", "dram", "disk", "external"),
    "sglang": ("hbm", "dram", "storage"),
    "dynamo": ("hbm", "dram", "disk"),
}
ALL_TIER_NAMES: tuple[str, ...] = tuple(sorted({n for v in TIER_NAMES.values() for n in v}))
# the gap buckets of hit_rate_gap_min (report/sessions.py GAP_BUCKETS holds their bounds)
GAP_BUCKET_NAMES = ("lt_30s", "30s_5m", "gt_5m")
INCONCLUSIVE_POLICIES = ("warn", "fail", "rerun")

# key -> (observed metric name, direction, unit). "max": observed <= target passes.
SLO_METRICS: dict[str, tuple[str, str, str]] = {
    "ttft_p50_ms": ("ttft_ms.p50", "max", "ms"),
    "ttft_p90_ms": ("ttft_ms.p90", "max", "ms"),
    "ttft_p95_ms": ("ttft_ms.p95", "max", "ms"),
    "ttft_p99_ms": ("ttft_ms.p99", "max", "ms"),
    "effective_ttft_p50_ms": ("effective_ttft_ms.p50", "max", "ms"),
    "effective_ttft_p95_ms": ("effective_ttft_ms.p95", "max", "ms"),
    "effective_ttft_p99_ms": ("effective_ttft_ms.p99", "max", "ms"),
    "itl_p99_ms": ("itl_ms.p99", "max", "ms"),
    "e2e_p95_ms": ("e2e_ms.p95", "max", "ms"),
    "decode_tps_p10": ("decode_tps.p10", "min", "tok/s"),
    "decode_tps_p50": ("decode_tps.p50", "min", "tok/s"),
    "output_tokens_per_request_min": ("output_tokens.min", "min", "tok"),
    "cache_hit_rate_min": ("hit_rate.<source>", "min", ""),
    "error_rate_max": ("error_rate", "max", ""),
    "goodput_min": ("goodput", "min", ""),
    "min_sustained_users": ("capacity.sustained_users", "min", "users"),
    "knee_min_tokens": ("knee_tokens.hbm", "min", "tok"),
    "ttft_hit_p95_ms": ("ttft_hit_ms.p95", "max", "ms"),
    "ttft_miss_p95_ms": ("ttft_miss_ms.p95", "max", "ms"),
    "session_p95_s": ("session_s.p95", "max", "s"),
    "fanout_p95_ms": ("fanout_ms.p95", "max", "ms"),
    "hit_rate_gap_min": ("hit_rate_gap.<bucket>", "min", ""),
    "external_hit_rate_min": ("external_hit_rate", "min", ""),
}
# session-level objectives (judged on whole sessions and turns, not in a controller window)
SESSION_KEYS = ("ttft_hit_p95_ms", "ttft_miss_p95_ms", "session_p95_s", "fanout_p95_ms",
                "hit_rate_gap_min")


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
    ``effective_ttft_*`` is TTFT plus client-side queueing (the time between when the
    plan wanted a request sent and when it was sent).

    The window and the verdict: ``warmup_s`` / ``warmup_requests`` / ``cooldown_s``
    leave requests out of the judged window (see :mod:`pytest_ctxplat.report.window`
    for the defaults); with ``period_s`` the window is also judged per period, and
    ``periods_met_min`` makes each percentile objective pass when met in at least that
    share of the periods. A percentile is judged on its ``confidence`` interval: pass
    when the pessimistic bound meets the objective, fail when the optimistic one misses
    it, otherwise inconclusive; ``on_inconclusive`` says what that does (``warn``: pass
    with a warning; ``fail``; ``rerun``: play the workload again, up to ``max_reruns``
    times, pooling the requests, then ``fail``). ``repeat`` plays the workload that many
    times (different token salts) and judges the pooled requests.
    ``min_sustained_users`` gates on capacity: the users an SLO-governed controller (or a
    sweep) sustained while meeting every other objective. ``knee_min_tokens`` gates on
    HBM's knee in a knee search (:mod:`pytest_ctxplat.orchestrator.knees`): the largest
    working set, in tokens, before HBM's hit rate dropped.

    Session-level objectives (agentic workloads; see :mod:`pytest_ctxplat.report.sessions`):
    ``ttft_hit_p95_ms`` / ``ttft_miss_p95_ms`` bound the TTFT of turns that hit (at least
    half of the prompt from cache) and of turns that miss; ``hit_rate_gap_min`` maps gap
    buckets (``lt_30s``, ``30s_5m``, ``gt_5m``: the time since the session's previous
    request ended) to the least hit rate of the turns after such a gap;
    ``session_p95_s`` bounds session completion time (first request's start to last
    request's end) and ``fanout_p95_ms`` the time from a subagent spawn to the end of
    its last subagent request.
    ``tier_hit_rate_min`` maps KV tier names (:data:`TIER_NAMES`: ``hbm``, ``dram``,
    ``nvme``, ...) to the least share of prompt tokens that tier must serve (server
    ``/metrics`` deltas); ``external_hit_rate_min`` bounds the KV connector's own hit
    rate (external prefix cache hits over queries).

    Measurement validity (not objectives: every run with a server that reports its
    model time is checked, see :mod:`pytest_ctxplat.report.timing`): when the p95 of
    the TTFT discrepancy, client minus the server's model time, exceeds both
    ``timing_skew_max_ms`` and ``timing_skew_max_ratio`` of the model TTFT, a verdict
    with a timing objective (:meth:`judges_timing`) is an invalid measurement.
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
    effective_ttft_p50_ms: float | None = setting(None, ge=0)
    effective_ttft_p95_ms: float | None = setting(None, ge=0)
    effective_ttft_p99_ms: float | None = setting(None, ge=0)
    warmup_s: float | None = setting(None, ge=0, doc="requests started before this are "
                                     "not judged (default: 10% of a time-bounded run, "
                                     "at most 60 s)")
    warmup_requests: int = setting(0, ge=0, doc="the first N requests are not judged")
    cooldown_s: float | None = setting(None, ge=0, doc="requests started this long before "
                                       "the bound are not judged (default: those in "
                                       "flight at the bound)")
    period_s: float | None = setting(None, gt=0, doc="judge the window per period")
    periods_met_min: float | None = setting(None, ge=0, le=1, doc="share of periods that "
                                            "must meet each percentile objective")
    confidence: float = setting(0.95, gt=0.5, lt=1, doc="of percentile intervals")
    on_inconclusive: str = setting("warn", choices=INCONCLUSIVE_POLICIES)
    max_reruns: int = setting(2, ge=0, doc="reruns under on_inconclusive='rerun'")
    repeat: int = setting(1, ge=1, doc="runs of the workload judged together")
    min_sustained_users: int | None = setting(None, ge=1)
    knee_min_tokens: int | None = setting(None, ge=1, doc="the HBM knee of a knee search "
                                          "is at least this many tokens")
    ttft_hit_p95_ms: float | None = setting(None, ge=0, doc="p95 TTFT of turns that hit")
    ttft_miss_p95_ms: float | None = setting(None, ge=0, doc="p95 TTFT of turns that miss")
    session_p95_s: float | None = setting(None, gt=0, doc="p95 session completion time")
    fanout_p95_ms: float | None = setting(None, gt=0, doc="p95 subagent fan-out latency")
    hit_rate_gap_min: Mapping[str, float] | None = setting(
        None, doc="least hit rate per gap bucket: lt_30s, 30s_5m, gt_5m")
    tier_hit_rate_min: dict[str, float] | None = setting(None, doc="tier name -> least "
                                                        "share of prompt tokens it serves")
    external_hit_rate_min: float | None = setting(None, ge=0, le=1)
    timing_skew_max_ms: float | None = setting(
        None, ge=0, doc="bound on the p95 of |client - server model| TTFT in ms (default "
        "100, or --ctxplat-timing-skew-max-ms)")
    timing_skew_max_ratio: float | None = setting(
        None, ge=0, doc="bound on that p95 relative to each request's model TTFT "
        "(default 1, or --ctxplat-timing-skew-max-ratio)")

    def validate(self) -> None:
        if self.tier_hit_rate_min is not None:
            _check_tiers(self.tier_hit_rate_min)
        if self.hit_rate_gap_min is not None:
            if not self.hit_rate_gap_min:
                raise FieldError("hit_rate_gap_min", "must name at least one gap bucket",
                                 ", ".join(GAP_BUCKET_NAMES))
            for bucket, rate in self.hit_rate_gap_min.items():
                if bucket not in GAP_BUCKET_NAMES:
                    raise FieldError("hit_rate_gap_min", f"unknown gap bucket {bucket!r}",
                                     ", ".join(GAP_BUCKET_NAMES))
                if isinstance(rate, bool) or not isinstance(rate, (int, float)) \
                        or not 0 <= rate <= 1:
                    raise FieldError(f"hit_rate_gap_min.{bucket}",
                                     f"must be a number from 0 to 1, got {rate!r}")
        if self.periods_met_min is not None and self.period_s is None:
            raise FieldError("periods_met_min", "needs period_s (the period's length in "
                                                "seconds)")
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
        """The judged keys (those in :data:`SLO_METRICS`) that are set; a per-bucket key
        becomes one objective per bucket (``hit_rate_gap_min.lt_30s``)."""
        out: dict[str, float] = {}
        for k in SLO_METRICS:
            value = getattr(self, k)
            if value is None:
                continue
            if isinstance(value, Mapping):
                out.update({f"{k}.{sub}": float(v) for sub, v in value.items()})
            else:
                out[k] = float(value)
        return out

    def metric_of(self, key: str) -> tuple[str, str, str]:
        """``(metric, direction, unit)`` of an :meth:`objectives` key."""
        return metric_of(key, self.cache_hit_source)

    def to_dict(self) -> dict[str, Any]:
        return {k: dict(v) if isinstance(v, Mapping) else v
                for k, v in dataclasses.asdict(self).items() if v is not None}

    def judges_timing(self) -> bool:
        """Whether an objective depends on measured time (latency, speed, goodput's
        time thresholds, sustained users): only then can timings that stray from the
        server's own account make the verdict an invalid measurement."""
        if self.goodput_min is not None or self.min_sustained_users is not None:
            return True
        return any(SLO_METRICS[k.partition(".")[0]][2] in ("ms", "s", "tok/s")
                   for k in self.objectives())

    @staticmethod
    def valid_keys() -> list[str]:
        return [f.name for f in dataclasses.fields(SLOSpec)]


def metric_of(key: str, hit_source: str = "request") -> tuple[str, str, str]:
    """``(metric, direction, unit)`` of an objective key: an :data:`SLO_METRICS` key, or
    ``KEY.SUB`` for a per-bucket key (``hit_rate_gap_min.lt_30s``)."""
    base, _, sub = key.partition(".")
    metric, direction, unit = SLO_METRICS[base]
    if base == "cache_hit_rate_min":
        metric = f"hit_rate.{hit_source}"
    elif sub:
        metric = metric.split(".")[0] + "." + sub
    return metric, direction, unit


def _check_tiers(tiers: Any) -> None:
    key = "tier_hit_rate_min"
    if not isinstance(tiers, Mapping) or not tiers:
        raise FieldError(key, f"must be a mapping of tier name to a rate in [0, 1], e.g. "
                              f"{{'hbm': 0.3}}, got {tiers!r}")
    for name, rate in tiers.items():
        if name not in ALL_TIER_NAMES:
            raise FieldError(f"{key}.{name}", f"unknown tier {name!r}; valid: "
                                              f"{', '.join(ALL_TIER_NAMES)}")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise FieldError(f"{key}.{name}", f"must be a rate in [0, 1], got {rate!r}")


def parse_slo(values: Mapping[str, Any], where: str) -> SLOSpec:
    """Build an SLOSpec from marker kwargs (or ``--slo`` values); errors name ``where``,
    the key and what is valid."""
    return build(SLOSpec, values, where)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Check:
    """One judged objective. ``status`` is ``pass``, ``fail`` or ``inconclusive`` (the
    ``interval`` straddles the target); ``passed`` applies the ``policy``
    (``on_inconclusive``): only ``warn`` lets an inconclusive check pass. ``interval``
    is ``(low, high)`` in the metric's unit (``inf``: no bound at this sample size);
    ``periods`` is ``(met, judged)`` when judged per period."""

    key: str
    metric: str
    direction: str  # "max" or "min"
    target: float
    observed: float | None
    status: str
    interval: tuple[float, float] | None = None
    periods: tuple[int, int] | None = None
    policy: str = "warn"
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "pass" or (self.status == "inconclusive"
                                          and self.policy == "warn")

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
        d["interval"] = None if self.interval is None else [
            None if math.isinf(x) else x for x in self.interval]
        d["passed"] = self.passed
        d["margin"] = self.margin
        return d

    def result_text(self) -> str:
        if self.status == "pass":
            return "ok"
        text = "FAIL" if self.status == "fail" else (
            "inconclusive (warn)" if self.passed else "INCONCLUSIVE")
        return text + (f": {self.note}" if self.note else "")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The judged objectives of one run. ``incomplete`` says why the run did not fill
    its measurement window (interrupted, the server died, a circuit breaker);
    ``invalid`` why its timings are not a valid measurement (the client's TTFT strays
    from the server's model time beyond the bound): such a verdict never passes,
    whatever the checks say."""

    checks: tuple[Check, ...]
    incomplete: str | None = None
    confidence: float = 0.95
    invalid: str | None = None

    @property
    def passed(self) -> bool:
        return self.incomplete is None and self.invalid is None and \
            all(c.passed for c in self.checks)

    @property
    def status(self) -> str:
        """``pass``, ``fail``, ``inconclusive`` (no check failed, one could not tell),
        ``incomplete`` or ``invalid`` (an invalid measurement)."""
        if self.incomplete is not None:
            return "incomplete"
        if self.invalid is not None:
            return "invalid"
        statuses = {c.status for c in self.checks}
        for s in ("fail", "inconclusive"):
            if s in statuses:
                return s
        return "pass"

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    @property
    def inconclusive(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == "inconclusive")

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
                    c.result_text(),
                    "" if c.interval is None else
                    f"[{_fmt(c.interval[0])}, {_fmt(c.interval[1])}]",
                ]
            )
        return tabulate(rows, headers=["metric", "target", "observed", "margin", "result",
                                       f"{self.confidence:.0%} interval"])

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "status": self.status, "incomplete": self.incomplete,
                "invalid": self.invalid, "confidence": self.confidence,
                "checks": [c.to_dict() for c in self.checks]}


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == int(v) and abs(v) >= 1:
        return str(int(v))
    return f"{v:.4g}"


def evaluate(
    spec: SLOSpec, observed: Mapping[str, float | None], notes: Mapping[str, str] | None = None,
    incomplete: str | None = None, *,
    intervals: Mapping[str, tuple[float, float] | None] | None = None,
    rate_intervals: Mapping[str, tuple[float, float] | None] | None = None,
    periods: Mapping[str, tuple[int, int]] | None = None, policy: str | None = None,
) -> Verdict:
    """Judge ``observed`` (metric name -> value or None) against ``spec``.

    ``notes`` maps metric names to why they are missing (e.g. the server does not
    report ``cached_tokens``) or why their interval is wide; a missing metric fails its
    objective with that note. ``intervals`` maps metric names to ``(low, high)``: such a
    metric passes when its pessimistic bound meets the target, fails when its optimistic
    one misses it, and is inconclusive otherwise; a metric without an interval (a rate,
    a count) is judged on its observed value (``rate_intervals`` are shown beside it
    for information). ``periods`` maps metric names to ``(met,
    judged)`` periods, judged against ``spec.periods_met_min`` when that is set.
    ``policy`` overrides ``spec.on_inconclusive``. ``incomplete`` (why the run ended
    early) makes the verdict ``incomplete``.
    """
    notes = notes or {}
    intervals = intervals or {}
    rate_intervals = rate_intervals or {}
    periods = periods or {}
    policy = policy or spec.on_inconclusive
    checks = []
    for key, target in spec.objectives().items():
        metric, direction, _unit = spec.metric_of(key)
        value = observed.get(metric)
        make = functools.partial(Check, key=key, metric=metric, direction=direction,
                                 target=target, policy=policy)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            note = notes.get(metric, "not measured")
            checks.append(make(observed=None, status="fail", note=note))
            continue
        interval = intervals.get(metric)
        counts = periods.get(metric)
        note = ""
        if spec.periods_met_min is not None and counts is not None:
            met, judged = counts
            ok = judged > 0 and met / judged >= spec.periods_met_min
            status = "pass" if ok else "fail"
            note = (f"met in {met} of {judged} periods of {spec.period_s:g} s, needs "
                    f"{spec.periods_met_min:.0%}")
        elif interval is not None:
            status = _judge_interval(interval, direction, target)
            if status == "inconclusive":
                note = notes.get(metric, f"the {spec.confidence:.0%} interval straddles "
                                         "the target")
        else:
            ok = value <= target if direction == "max" else value >= target
            status = "pass" if ok else "fail"
            interval = rate_intervals.get(metric)
        checks.append(make(observed=float(value), status=status, interval=interval,
                            periods=counts, note=note))
    for tier, target in (spec.tier_hit_rate_min or {}).items():
        metric = f"tier_hit_rate.{tier}"
        value = observed.get(metric)
        make = functools.partial(Check, key=f"tier_hit_rate_min.{tier}", metric=metric,
                                 direction="min", target=float(target), policy=policy)
        if value is None or math.isnan(value):
            checks.append(make(observed=None, status="fail",
                               note=notes.get(metric, "not measured")))
        else:
            checks.append(make(observed=float(value),
                               status="pass" if value >= target else "fail"))
    return Verdict(tuple(checks), incomplete, spec.confidence)


def _judge_interval(interval: tuple[float, float], direction: str, target: float) -> str:
    low, high = interval
    pessimistic, optimistic = (high, low) if direction == "max" else (low, high)

    def meets(x: float) -> bool:
        return x <= target if direction == "max" else x >= target

    if meets(pessimistic):
        return "pass"
    return "inconclusive" if meets(optimistic) else "fail"
