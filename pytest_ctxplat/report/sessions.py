"""Session-level figures of agentic workloads: turns that hit versus turns that miss,
hit rate by the gap before a turn, session completion time and subagent fan-out latency.

A *turn hits* when at least :data:`HIT_SHARE` of its prompt came from cache: the
server's ``cached_tokens`` where the request reported them, else the workload plan's
designed cached tokens. The *gap* before a turn is the time between the end of the
previous request of the same session and the turn's send (``RequestRecord.gap_s``);
turns are bucketed by it (:data:`GAP_BUCKETS`): under 30 s (tool calls), 30 s to 5 min,
over 5 min (human pauses). A bucket's hit rate is the share of its turns' prompt tokens
served from cache (same source rule). A session's completion time runs from its first
request's start to its last request's end, over sessions that ran to their end (their
last planned request was sent: ``RequestRecord.last_turn``; where the driver does not
know, every session) and whose requests all succeeded. A fan-out's latency runs from the
spawn step to the end of the last request of its subagents, over fan-outs whose
subagents all count as such.

Every figure is computed per run and pooled across runs, so session ids that repeat in
repeated runs never mix.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .records import RequestRecord

__all__ = ["GAP_BUCKETS", "HIT_SHARE", "SESSION_SAMPLED", "cached_share", "gap_bucket",
           "notes", "observed", "section", "session_samples"]

HIT_SHARE = 0.5

# name, lower bound (inclusive), upper bound (exclusive), in seconds
GAP_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("lt_30s", 0.0, 30.0),
    ("30s_5m", 30.0, 300.0),
    ("gt_5m", 300.0, math.inf),
)

# sample groups (one value per turn, session or fan-out) judged with intervals
SESSION_SAMPLED = ("ttft_hit_ms", "ttft_miss_ms", "session_s", "fanout_ms")


def _cached(r: RequestRecord) -> tuple[int, int]:
    """(cached, prompt) tokens of one request: request-side where reported, else
    designed."""
    if r.cached_tokens is not None:
        return r.cached_tokens, r.usage_prompt_tokens or r.prompt_tokens
    return r.designed_cached_tokens, r.prompt_tokens


def cached_share(r: RequestRecord) -> float:
    """Share of the request's prompt served from cache (0 for an empty prompt)."""
    cached, prompt = _cached(r)
    return cached / prompt if prompt else 0.0


def gap_bucket(gap_s: float) -> str:
    """The :data:`GAP_BUCKETS` name of a gap."""
    for name, low, high in GAP_BUCKETS:
        if low <= gap_s < high:
            return name
    return GAP_BUCKETS[-1][0]


def _one_run(records: Sequence[RequestRecord]) -> dict[str, list[float]]:
    ok = [r for r in records if r.ok]
    out: dict[str, list[float]] = {g: [] for g in SESSION_SAMPLED}
    for r in ok:
        if r.ttft_s is not None:
            group = "ttft_hit_ms" if cached_share(r) >= HIT_SHARE else "ttft_miss_ms"
            out[group].append(r.ttft_s * 1000.0)
    sessions: dict[str, list[RequestRecord]] = defaultdict(list)
    fanouts: dict[tuple[str, float], list[RequestRecord]] = defaultdict(list)
    for r in records:
        if r.outcome == "cancelled" and r.end_s is None:
            continue
        sessions[r.session_id].append(r)
        if r.parent_session_id is not None and r.spawned_s is not None:
            fanouts[(r.parent_session_id, r.spawned_s)].append(r)
    done = {sid for sid, recs in sessions.items() if _complete(recs)}
    for sid in done:
        recs = sessions[sid]
        end = max(r.end_s for r in recs if r.end_s is not None)
        out["session_s"].append(end - min(r.start_s for r in recs))
    for (_, spawned), recs in fanouts.items():
        if all(r.session_id in done for r in recs):
            end = max(r.end_s for r in recs if r.end_s is not None)
            out["fanout_ms"].append((end - spawned) * 1000.0)
    return out


def _complete(recs: Sequence[RequestRecord]) -> bool:
    """A session that ran to its end with every request successful."""
    if not all(r.ok and r.end_s is not None for r in recs):
        return False
    known = [r.last_turn for r in recs if r.last_turn is not None]
    return not known or any(known)


def session_samples(runs: Sequence[Sequence[RequestRecord]]) -> dict[str, np.ndarray]:
    """The values behind each :data:`SESSION_SAMPLED` group's percentiles (ms, or s for
    ``session_s``), per run and pooled."""
    pooled: dict[str, list[float]] = {g: [] for g in SESSION_SAMPLED}
    for run in runs:
        for group, values in _one_run(run).items():
            pooled[group].extend(values)
    return {g: np.asarray(v, dtype=np.float64) for g, v in pooled.items()}


def _gap_rates(runs: Sequence[Sequence[RequestRecord]]) -> dict[str, dict[str, Any]]:
    acc = {name: [0, 0, 0, 0] for name, _, _ in GAP_BUCKETS}  # turns, hits, cached, prompt
    for run in runs:
        for r in run:
            if not r.ok or r.gap_s is None:
                continue
            a = acc[gap_bucket(r.gap_s)]
            cached, prompt = _cached(r)
            a[0] += 1
            a[1] += prompt > 0 and cached / prompt >= HIT_SHARE
            a[2] += cached
            a[3] += prompt
    return {name: {"turns": a[0], "hit_turns": a[1],
                   "hit_rate": a[2] / a[3] if a[3] else None}
            for name, a in acc.items()}


def _dist(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    out = {name: float(np.percentile(values, q))
           for name, q in (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99))}
    out.update(mean=float(values.mean()), min=float(values.min()), max=float(values.max()),
               count=float(values.size))
    return out


def section(runs: Sequence[Sequence[RequestRecord]]) -> dict[str, Any]:
    """The result JSON's ``sessions`` section for the records of ``runs``."""
    values = session_samples(runs)
    return {"hit_share": HIT_SHARE,
            "gap_buckets": {name: [low, None if math.isinf(high) else high]
                            for name, low, high in GAP_BUCKETS},
            **{group: _dist(v) for group, v in values.items()},
            "hit_rate_gap": _gap_rates(runs)}


def observed(sec: Mapping[str, Any]) -> dict[str, float | None]:
    """Flatten a :func:`section` into observed metric names (``ttft_hit_ms.p95``,
    ``session_s.p95``, ``hit_rate_gap.lt_30s`` ...)."""
    out: dict[str, float | None] = {}
    for group in SESSION_SAMPLED:
        dist = sec.get(group)
        for name in ("p50", "p90", "p95", "p99", "mean", "max"):
            out[f"{group}.{name}"] = dist[name] if dist else None
    for name, row in (sec.get("hit_rate_gap") or {}).items():
        out[f"hit_rate_gap.{name}"] = row["hit_rate"]
    return out


def notes(sec: Mapping[str, Any]) -> dict[str, str]:
    """Why a session figure is missing, by observed metric name."""
    out: dict[str, str] = {}
    why = {"ttft_hit_ms": f"no successful turn had {HIT_SHARE:.0%} of its prompt cached",
           "ttft_miss_ms": f"every successful turn had {HIT_SHARE:.0%} of its prompt cached",
           "session_s": "no session ran to its end with every request successful",
           "fanout_ms": "no subagent fan-out whose requests all succeeded (the workload "
                        "has no spawn steps, or none finished)"}
    for group, text in why.items():
        if sec.get(group) is None:
            for name in ("p50", "p90", "p95", "p99", "mean", "max"):
                out[f"{group}.{name}"] = text
    for name, row in (sec.get("hit_rate_gap") or {}).items():
        if row["hit_rate"] is None:
            out[f"hit_rate_gap.{name}"] = f"no successful turn after a gap in {name}"
    return out
