"""The realism report: source traces against the synthetic workload fitted to them.

Both sides are measured the same way: keys per session (a block shared by two sessions
counts once in each, as kv-cache-tester ids are local to a file), the exact TTL replay of
:mod:`.replay`, and the same distributions. The synthetic side is the workload planned
offline (the designed path: every response takes ``ttft_s + output / decode_tps``) with
``sessions`` users that each play one session to its end, so no session is cut short
(by default as many sessions as the source has, at least ``MIN_SYNTHETIC_SESSIONS``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import numpy as np

from ..workload.plan import plan_workload
from ..workload.spec import WorkloadSpec
from ..workload.traces import Trace
from .analyze import block_figures, ttl_key
from .fit import ks_distance
from .replay import replay_cache
from .sources import trace_from_plan

__all__ = ["REPORT_TTLS", "format_realism", "realism_report", "synthetic_trace",
           "trace_figures"]

REPORT_TTLS = (60.0, 300.0, 3600.0)
MIN_SYNTHETIC_SESSIONS = 200  # by default: as many as the source, at least this many
AGE_BUCKETS_S = (0.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, math.inf)
DIST_NAMES = ("input_tokens", "output_tokens", "think_time_s", "gap_s", "session_requests",
              "session_duration_s")


def _rate(a: float, b: float) -> float:
    return float(a) / float(b) if b else 0.0


def _groups(keys: np.ndarray[Any, Any]) -> list[np.ndarray[Any, Any]]:
    """Row indices per distinct key, each in row order."""
    order = np.argsort(keys, kind="stable")
    cuts = np.flatnonzero(np.diff(keys[order])) + 1
    return list(np.split(order, cuts)) if len(order) else []


def trace_figures(trace: Trace, ttls: Sequence[float] = REPORT_TTLS,
                  think_time_s: np.ndarray[Any, Any] | None = None) -> dict[str, Any]:
    """Per-session cache figures and distributions of ``trace`` (keys per session).

    ``think_time_s``: the wait before each request (defaults to the trace's column)."""
    st = replay_cache(trace, [*ttls, math.inf], lru_capacities=[])
    bs = st.block_size
    ttl_out: dict[str, dict[str, float]] = {}
    for i, t in enumerate(st.ttls):
        if math.isinf(t):
            continue
        ttl_out[ttl_key(float(t))] = {
            **block_figures(st, st.ttl_hit_blocks[i]),
            "working_set_tokens_per_session": _rate(st.ttl_occupancy_block_s[i] * bs,
                                                    st.session_time_s),
        }
    agent_key = trace.session.astype(np.int64) * 1_000_003 + trace.agent
    gaps = [np.diff(trace.arrival_s[g]) for g in _groups(agent_key) if len(g) > 1]
    sessions = _groups(trace.session.astype(np.int64))
    think = trace.think_time_s if think_time_s is None else think_time_s
    dists = {
        "input_tokens": trace.input_tokens.astype(np.float64),
        "output_tokens": trace.output_tokens.astype(np.float64),
        "think_time_s": think[np.isfinite(think)],
        "gap_s": np.concatenate(gaps) if gaps else np.zeros(0),
        "session_requests": np.array([len(g) for g in sessions], np.float64),
        "session_duration_s": np.array([np.ptp(trace.arrival_s[g]) for g in sessions]),
    }
    return {
        "requests": len(trace), "sessions": len(sessions), "distinct_blocks": st.distinct_blocks,
        "ttl": ttl_out,
        "infinite": block_figures(st, st.infinite_hit_blocks),
        "context_tokens_by_session_age": _by_age(trace, sessions),
        "_samples": dists,
    }


def _by_age(trace: Trace, sessions: list[np.ndarray[Any, Any]]) -> list[dict[str, Any]]:
    """Working set over time: median input tokens of the requests sent at each session
    age (seconds since the session's first request)."""
    age = np.empty(len(trace))
    for g in sessions:
        age[g] = trace.arrival_s[g] - trace.arrival_s[g].min()
    out = []
    for lo, hi in pairwise(AGE_BUCKETS_S):
        sel = (age >= lo) & (age < hi)
        n = int(sel.sum())
        out.append({"from_s": lo, "to_s": None if math.isinf(hi) else hi, "requests": n,
                    "median_input_tokens": float(np.median(trace.input_tokens[sel]))
                    if n else None})
    return out


def synthetic_trace(spec: WorkloadSpec, sessions: int, *, seed: int = 0,
                    per_session: bool = True) -> tuple[Trace, np.ndarray[Any, Any]]:
    """``spec`` played offline by ``sessions`` users of one session each (keys per
    session) and the wait before each request."""
    changes: dict[str, Any] = {"users": sessions, "duration_s": None, "max_requests": None}
    if hasattr(spec, "recycle"):
        changes["recycle"] = False
    if hasattr(spec, "start_spread_s"):
        changes["start_spread_s"] = 0.0
    spec = dataclasses.replace(spec, **changes)
    plan = plan_workload(spec, seed=seed)
    trace = trace_from_plan(plan, f"synthetic {spec.kind}", per_session=per_session)
    delay = np.fromiter((r.delay_s for r in plan.requests), np.float64, len(plan))
    order = np.argsort(plan.t_s, kind="stable")
    first = np.zeros(len(plan), bool)
    seen: set[str] = set()
    for i, sid in enumerate(plan.session_id):
        if sid not in seen:
            seen.add(sid)
            first[i] = True
    delay[first] = np.nan  # a session's first wait is its start, not a think time
    # agents: one per planned session id within a top-level session
    agent_ids = {sid: i for i, sid in enumerate(dict.fromkeys(plan.session_id))}
    agent = np.fromiter((agent_ids[s] for s in plan.session_id), np.int32, len(plan))
    trace = dataclasses.replace(trace, agent=agent[order])
    return trace, delay[order]


def realism_report(source: Trace, spec: WorkloadSpec, *, sessions: int | None = None,
                   seed: int = 0, ttls: Sequence[float] = REPORT_TTLS,
                   per_session: bool = True) -> dict[str, Any]:
    """Source against synthetic, side by side (see ``docs/reference/workloads.md``).
    ``per_session`` False (a trace without sessions, like Mooncake): the synthetic
    sessions share their blocks as planned."""
    src = trace_figures(_first_waits_nan(source), ttls)
    n = sessions if sessions is not None else max(MIN_SYNTHETIC_SESSIONS, src["sessions"])
    syn_trace, delay = synthetic_trace(spec, n, seed=seed, per_session=per_session)
    syn = trace_figures(syn_trace, ttls, think_time_s=delay)
    a, b = src.pop("_samples"), syn.pop("_samples")
    dists = {}
    for name in DIST_NAMES:
        x, y = a[name], b[name]
        dists[name] = {"ks": ks_distance(x, y),
                       "source": _summary(x), "synthetic": _summary(y)}
    return {"schema": "ctxplat-realism/1", "kind": spec.kind, "source": src,
            "synthetic": syn, "distributions": dists}


def _first_waits_nan(trace: Trace) -> Trace:
    """The source's think times with each agent's first request's wait left out."""
    think = trace.think_time_s.copy()
    key = trace.session.astype(np.int64) * 1_000_003 + trace.agent
    for g in _groups(key):
        think[g[0]] = np.nan
    return dataclasses.replace(trace, think_time_s=think)


def _summary(x: np.ndarray[Any, Any]) -> dict[str, float | None]:
    if not len(x):
        return {"n": 0, "median": None, "mean": None, "p90": None}
    return {"n": len(x), "median": float(np.median(x)), "mean": float(np.mean(x)),
            "p90": float(np.quantile(x, 0.9))}


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def format_realism(doc: dict[str, Any]) -> str:
    """The report as text: the TTL table, then the distributions."""
    from tabulate import tabulate

    src, syn = doc["source"], doc["synthetic"]
    rows = []
    for key in src["ttl"]:
        s, y = src["ttl"][key], syn["ttl"][key]
        rows.append([key, f"{s['block_hit_rate']:.3f}", f"{y['block_hit_rate']:.3f}",
                     f"{s['misses_per_block']:.2f}", f"{y['misses_per_block']:.2f}",
                     f"{s['working_set_tokens_per_session']:,.0f}",
                     f"{y['working_set_tokens_per_session']:,.0f}"])
    rows.append(["inf", f"{src['infinite']['block_hit_rate']:.3f}",
                 f"{syn['infinite']['block_hit_rate']:.3f}", "", "", "", ""])
    lines = [f"source: {src['requests']:,} requests in {src['sessions']} sessions; synthetic "
             f"({doc['kind']}): {syn['requests']:,} requests in {syn['sessions']} sessions",
             "", tabulate(rows, headers=["TTL s", "hit source", "hit synthetic",
                                          "refills source", "refills synthetic",
                                          "WS tok/session source", "WS synthetic"],
                          tablefmt="simple", disable_numparse=True), ""]
    drows = []
    for name, d in doc["distributions"].items():
        s, y = d["source"], d["synthetic"]
        drows.append([name, f"{d['ks']:.3f}", f"{fmt(s['median'])} / {fmt(s['mean'])}",
                      f"{fmt(y['median'])} / {fmt(y['mean'])}"])
    lines.append(tabulate(drows, headers=["distribution", "KS", "source median / mean",
                                          "synthetic median / mean"],
                          tablefmt="simple", disable_numparse=True))
    return "\n".join(lines)
