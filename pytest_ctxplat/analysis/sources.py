"""What ``ctxplat analyze`` reads: trace files and folders, or workload specs.

A workload (a kind name, a definition name or a YAML path) is planned offline with
:func:`pytest_ctxplat.workload.plan.plan_workload`: each user plays its sessions one
request after another, every response taking ``ttft_s + output_tokens / decode_tps``
seconds (0.5 s and 50 tokens/s by default), subagents concurrently from their spawn; the
spec's ``duration_s`` (or ``--duration``) bounds it. Each request's blocks are its full
block ids plus its partial tail block, and each user is one session.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..workload.plan import Plan
from ..workload.traces import Trace, build_trace, read_traces

__all__ = ["designed_analysis", "load_sources", "trace_from_plan", "trace_from_workload"]

DEFAULT_WORKLOAD_DURATION_S = 3600.0


def trace_from_workload(
    name: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    duration_s: float | None = None,
    ttft_s: float = 0.5,
    decode_tps: float = 50.0,
    per_session: bool = False,
) -> Trace:
    """The requests workload ``name`` would send, as a :class:`Trace`: one session per
    user, or with ``per_session`` one per top-level session (a subagent's requests in
    its parent's) with block keys of its own (see :func:`trace_from_plan`)."""
    from ..workload.loader import load_workload
    from ..workload.plan import plan_workload

    spec = load_workload(name, overrides, where=f"analyze {name}")
    bound = duration_s
    if bound is None and spec.bound_s is None and spec.max_requests is None:
        bound = DEFAULT_WORKLOAD_DURATION_S
    plan = plan_workload(spec, seed=seed, duration_s=bound, ttft_s=ttft_s,
                         decode_tps=decode_tps)
    if not len(plan):
        raise ConfigError(f"analyze {name}: the workload sends no requests within its bound")
    return trace_from_plan(plan, name, per_session=per_session)


def trace_from_plan(plan: Plan, name: str, *, per_session: bool = False) -> Trace:
    """A planned workload as a :class:`Trace`. With ``per_session`` each top-level
    session is a session of the trace and its blocks are its own (a block two sessions
    share counts once in each), as in kv-cache-tester folders whose ids are local to a
    file; otherwise each user is one session and blocks are shared as planned."""
    blocks = []
    partial = []
    for r in plan.requests:
        if r.tail_len:
            blocks.append(np.append(r.blocks, r.tail_id))
        else:
            blocks.append(r.blocks)
        partial.append(r.tail_len > 0)
    if per_session:
        keys: list[Any] = list(plan.root_session or plan.session_id)
        names = list(dict.fromkeys(keys))
    else:
        keys = plan.user.tolist()
        names = sorted(set(keys))
    where = {u: i for i, u in enumerate(names)}
    session = [where[k] for k in keys]
    if per_session:
        blocks = [np.asarray(b, np.int64) + (np.int64(s) << 40)
                  for b, s in zip(blocks, session, strict=True)]
    return build_trace(
        name, int(plan.requests[0].block_size), plan.t_s, plan.prompt_tokens, blocks,
        output_tokens=[r.output_tokens for r in plan.requests], last_block_partial=partial,
        session=session, session_names=[str(n) if per_session else f"user {n}" for n in names],
    )


MAX_DESIGNED_REQUESTS = 20_000


def designed_analysis(run: Mapping[str, Any]) -> dict[str, Any]:
    """The cache analysis (TTL curves) of the workload a run played, planned offline
    from its result's ``workload`` and ``seed`` (see :func:`trace_from_workload`)."""
    from .analyze import analyze

    w = dict(run.get("workload") or {})
    kind = w.pop("kind", None)
    if not kind:
        raise ConfigError("the run records no workload kind")
    if len(run.get("records") or []) > MAX_DESIGNED_REQUESTS:
        raise ConfigError(f"more than {MAX_DESIGNED_REQUESTS:,} requests; run ctxplat "
                          "analyze on the workload and pass --analysis")
    trace = trace_from_workload(str(kind), w, seed=int(run.get("seed") or 0))
    doc = analyze(trace).to_dict()
    doc["name"] = "the run's workload as designed"
    return doc


def _is_trace_path(s: str) -> bool:
    p = Path(s)
    return p.is_dir() or (p.is_file() and p.suffix in (".json", ".jsonl"))


def load_sources(
    sources: Sequence[str],
    *,
    fmt: str | None = None,
    seed: int = 0,
    duration_s: float | None = None,
    overrides: Mapping[str, Any] | None = None,
    strict: bool = False,
    per_session: bool = False,
) -> Trace:
    """Trace paths are read together (:func:`read_traces`; odd records are counted, or
    refused with ``strict``); a single non-path source is a workload (``per_session``:
    see :func:`trace_from_plan`). Mixing the two is refused (their times and users do
    not line up)."""
    if not sources:
        raise ConfigError("analyze: give at least one trace path or workload")
    paths = [s for s in sources if _is_trace_path(s)]
    others = [s for s in sources if not _is_trace_path(s)]
    if paths and others:
        raise ConfigError(
            f"analyze: {others[0]!r} is not a trace file or folder; analyse traces and "
            "workloads in separate runs"
        )
    if paths:
        if overrides:
            raise ConfigError("analyze: --set applies to workloads, not traces")
        return read_traces(paths, fmt=fmt, strict=strict)
    if len(others) > 1:
        raise ConfigError(f"analyze: one workload at a time, got {', '.join(others)}")
    return trace_from_workload(others[0], overrides, seed=seed, duration_s=duration_s,
                               per_session=per_session)
