"""Built-in kind ``trace``: replay a recorded trace (kv-cache-tester sessions or Mooncake).

Every request's prompt reproduces the trace's block prefix structure exactly at block
granularity: trace block id *b* becomes one run id (rendered to the same tokens every
time it appears), a Mooncake partial last block becomes a partial tail of that id, and
the kv-cache-tester tail (the tokens after the last full block, which carry no id) gets
fresh tokens of its own. So the replay's designed hit rate equals the trace's.

Timing:

- ``original``: every request at its own timestamp (open loop), whatever the server's
  speed, in the trace's arrival order; with ``wait_for_previous`` (the default) a
  request also waits until the request it builds on finished: in a kv-cache-tester
  trace the same agent's previous request; otherwise (a subagent's first request, any
  Mooncake request) the latest request that used the deepest block its prompt shares
  with earlier prompts. A slow server then delays requests as it would delay a real
  agent, instead of receiving follow-ups before the answers they build on;
- ``think_time``: each agent waits for its previous response, then the trace's think
  time (kv-cache-tester only); a subagent starts when the request it followed finishes,
  and the parent's next request waits for its blocking subagents, not for the
  async-launched ones.

Async-launched subagents (kv-cache-tester ``status: async_launched``) start at their
marker's time in both timings (the reader places them there) and never hold up their
parent; blocking subagents start at ``t - duration_ms/1000``.

``time_scale`` multiplies every time (0.1 replays ten times faster); ``max_idle_s`` caps
each idle gap (between consecutive arrivals, or a think time) before scaling.
``warm_prefix_tokens`` makes the first whole blocks of every request common to all
sessions (a system prompt shared across users, as kv-cache-tester's warm prefix does).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from .. import builtin
from ..config import FieldError, setting
from ..errors import ConfigError
from .model import RequestPlan, SessionPlan, SpawnStep, Step, TimedRequest
from .spec import WorkloadContext, WorkloadSpec

if TYPE_CHECKING:
    from .traces import Trace

__all__ = ["TIMINGS", "TraceReplay", "resolve_trace_path"]

TIMINGS = ("original", "think_time")


def resolve_trace_path(path: str) -> Path:
    """``path`` as given (absolute, or relative to the working directory), else one of
    the sample traces shipped with the package (``agent-session-small.json``, also
    written ``fixtures/traces/agent-session-small.json``)."""
    p = Path(path).expanduser()
    if p.is_absolute() or os.path.exists(p):  # never raises (a name too long, a NUL)
        return p
    shipped = builtin.trace_path(path)
    return shipped if shipped is not None else p


@dataclasses.dataclass(frozen=True, kw_only=True)
class TraceReplay(WorkloadSpec):
    """Replay a trace file or folder (see the module docstring)."""

    kind = "trace"
    path: str = setting("", path=True, doc="kv-cache-tester JSON file or folder, or "
                        "Mooncake JSONL file")
    timing: str = setting("original", choices=TIMINGS, doc="when requests are sent")
    time_scale: float = setting(1.0, gt=0, doc="multiplies every time")
    max_idle_s: float | None = setting(None, ge=0, doc="cap on each idle gap")
    warm_prefix_tokens: int = setting(0, ge=0, doc="leading tokens common to all sessions")
    first_requests: int | None = setting(None, gt=0, doc="replay only the first N")
    use_trace_output: bool = setting(True, doc="output tokens as recorded")
    wait_for_previous: bool = setting(True, doc="wait for the request a request builds on")

    def validate(self) -> None:
        if not self.path:
            raise FieldError("path", "is required (a kv-cache-tester JSON file or folder, "
                                     "or a Mooncake JSONL file)")
        if not os.path.exists(resolve_trace_path(self.path)):
            raise FieldError("path", f"{self.path!r} does not exist (a relative path is "
                                     "tried from the working directory, then from the "
                                     "definition's folder, then among the shipped samples)")

    # -- the trace ----------------------------------------------------------------------
    def trace(self) -> Trace:
        """The trace (cut to ``first_requests``); read once per spec."""
        from .traces import read_trace

        cached: Trace | None = _CACHE.get(self._key)
        if cached is None:
            p = resolve_trace_path(self.path)
            if not os.path.exists(p):
                raise ConfigError(f"workload 'trace': path {self.path!r} does not exist")
            cached = read_trace(p)
            if self.first_requests is not None and self.first_requests < len(cached):
                cached = _head(cached, self.first_requests)
            _CACHE[self._key] = cached
        return cached

    @property
    def _key(self) -> tuple[str, int | None]:
        return (str(resolve_trace_path(self.path)), self.first_requests)

    def _plans(self, ctx: WorkloadContext) -> list[RequestPlan]:
        key = ("trace-plans", self._key, self.warm_prefix_tokens, self.use_trace_output)
        if key not in ctx.shared:
            ctx.shared[key] = build_plans(self, self.trace(), ctx)
        plans: list[RequestPlan] = ctx.shared[key]
        return plans

    # -- timing -------------------------------------------------------------------------
    def _gap(self, seconds: float) -> float:
        if not math.isfinite(seconds) or seconds < 0:
            seconds = 0.0
        if self.max_idle_s is not None:
            seconds = min(seconds, self.max_idle_s)
        return seconds * self.time_scale

    def send_times(self) -> npt.NDArray[np.float64]:
        """Run times of the requests in ``original`` timing (gaps capped, scaled)."""
        arrival: npt.NDArray[np.float64] = self.trace().arrival_s
        if not len(arrival):
            return np.zeros(0, np.float64)
        gaps = np.diff(arrival, prepend=0.0)
        if self.max_idle_s is not None:
            gaps = np.minimum(gaps, self.max_idle_s)
        out: npt.NDArray[np.float64] = np.cumsum(np.maximum(gaps, 0.0)) * self.time_scale
        return out

    def prepare(self, ctx: WorkloadContext) -> None:
        self._plans(ctx)

    def run_notes(self) -> dict[str, str]:
        """The trace's odd records, counted by kind (read with an assumption)."""
        odd = self.trace().odd_records
        if not odd:
            return {}
        kinds = ", ".join(f"{n:,} {k}" for k, n in sorted(odd.items()))
        return {"trace.odd_records": f"{sum(odd.values()):,} odd records read with an "
                                     f"assumption ({kinds}); ctxplat analyze lists "
                                     "them"}

    def timed_requests(self, ctx: WorkloadContext) -> Iterator[TimedRequest] | None:
        if self.timing != "original":
            return None
        return self._timed(self._plans(ctx), self.send_times())

    def _timed(self, plans: list[RequestPlan], times: npt.NDArray[np.float64]
               ) -> Iterator[TimedRequest]:
        t = self.trace()
        names = _agent_names(t)
        counters: dict[str, int] = {}
        builds_on = _builds_on(t) if self.wait_for_previous else [-1] * len(t)
        for i, plan in enumerate(plans):
            sid = names[i]
            k = counters.get(sid, 0)
            counters[sid] = k + 1
            yield TimedRequest(float(times[i]), int(t.session[i]), sid, k, plan, builds_on[i])

    def user_count(self) -> int:
        """``think_time`` timing plays one closed-loop user per trace session."""
        if self.timing == "original":
            return 0
        return len(self.trace().session_names)

    def user_sessions(self, user: int, ctx: WorkloadContext) -> Iterator[SessionPlan]:
        """``think_time`` timing: user *u* plays the trace's session *u*."""
        t = self.trace()
        if self.timing == "original":
            return iter(())
        if bool(np.isnan(t.think_time_s).all()) and len(t):
            raise ConfigError(f"workload 'trace': timing think_time needs think times, which "
                              f"{self.path!r} does not have (Mooncake traces); use original")
        if user >= len(t.session_names):
            return iter(())
        return iter([self._closed_session(user, ctx)])

    def _closed_session(self, s: int, ctx: WorkloadContext) -> SessionPlan:
        t = self.trace()
        plans = self._plans(ctx)
        rows = np.nonzero(t.session == s)[0]
        by_agent: dict[int, list[int]] = {}
        for r in rows.tolist():
            by_agent.setdefault(int(t.agent[r]), []).append(r)
        children_of: dict[int, list[int]] = {}  # parent row (or -1) -> subagent numbers
        detached: set[int] = set()  # async-launched subagents: the parent does not wait
        for a, rs in by_agent.items():
            if a:
                children_of.setdefault(int(t.parent_request[rs[0]]), []).append(a)
                if t.async_agent[rs[0]]:
                    detached.add(a)
        name = t.session_names[s]
        start = self._gap(float(t.arrival_s[rows[0]])) if len(rows) else 0.0

        def chain(a: int, first_delay: float) -> Iterator[Step]:
            rs = by_agent.get(a, [])
            prev_arrival = None
            for j, r in enumerate(rs):
                if j == 0:
                    delay = first_delay
                else:
                    think = float(t.think_time_s[r])
                    if math.isnan(think):
                        assert prev_arrival is not None
                        think = float(t.arrival_s[r]) - prev_arrival
                    delay = self._gap(think)
                if a == 0 and j == 0 and -1 in children_of:
                    yield from spawn(-1, delay)
                    delay = 0.0
                yield dataclasses.replace(plans[r], delay_s=delay)
                prev_arrival = float(t.arrival_s[r])
                if r in children_of:
                    yield from spawn(r, 0.0)

        def spawn(parent: int, delay: float) -> Iterator[SpawnStep]:
            """The subagents started after ``parent``: the async-launched ones without
            waiting, then the blocking ones, which the parent waits for."""
            for wait in (False, True):
                kids = tuple(session(f"{name}/a{a}", chain(a, 0.0))
                             for a in children_of[parent] if (a in detached) != wait)
                if kids:
                    yield SpawnStep(kids, delay_s=delay, wait=wait)
                    delay = 0.0

        def session(sid: str, steps: Iterator[Step]) -> SessionPlan:
            return SessionPlan(sid, _joined(sid, steps))

        return session(name, chain(0, start))


_CACHE: dict[tuple[str, int | None], Trace] = {}
_NO_OP = SpawnStep((), wait=True)  # a step that does nothing (keeps step numbers)


def _joined(sid: str, steps: Iterator[Step], done: int = 0) -> Iterator[Step]:
    """``steps`` of session ``sid``, where a spawn that does not wait (async-launched
    subagents) becomes a spawn that waits for those subagents *and* for the rest of
    ``sid``'s steps, played as one more child. The parent goes on at once, as without
    waiting, and its session ends only when its subagents have (a run ends when its
    sessions do). The rest starts with ``done + 1`` no-op steps, so its requests keep the
    step numbers (record indices) they would have had in one session."""
    for step in steps:
        if isinstance(step, SpawnStep) and not step.wait:
            rest = SessionPlan(sid, itertools.chain(itertools.repeat(_NO_OP, done + 1),
                                                    _joined(sid, steps, done + 1)))
            yield SpawnStep((*step.children, rest), delay_s=step.delay_s, wait=True)
            return
        yield step
        done += 1


def _head(t: Trace, n: int) -> Trace:
    off = t.block_offsets
    return dataclasses.replace(
        t, arrival_s=t.arrival_s[:n], input_tokens=t.input_tokens[:n],
        output_tokens=t.output_tokens[:n], block_offsets=off[: n + 1],
        block_ids=t.block_ids[: off[n]], last_block_partial=t.last_block_partial[:n],
        session=t.session[:n], agent=t.agent[:n],
        parent_request=np.where(t.parent_request[:n] < n, t.parent_request[:n], -1),
        think_time_s=t.think_time_s[:n], api_time_s=t.api_time_s[:n],
        async_agent=t.async_agent[:n])


def _builds_on(t: Trace) -> list[int]:
    """Per request, the earlier request it builds on (-1: none): the same agent's
    previous request, else (a subagent's first request, any Mooncake request) the latest
    request that used the deepest block this prompt shares with earlier prompts."""
    last_user: dict[int, int] = {}  # trace block id -> latest request that used it
    last_of_agent: dict[tuple[int, int], int] = {}
    off = t.block_offsets.tolist()
    ids = t.block_ids.tolist()
    partial = t.last_block_partial.tolist()
    out = []
    for i, (s, a) in enumerate(zip(t.session.tolist(), t.agent.tolist(), strict=True)):
        blocks = ids[off[i]: off[i + 1] - (1 if partial[i] else 0)]
        prev = last_of_agent.get((s, a), -1) if t.formats == ("kv-cache-tester",) else -1
        if prev < 0:
            h = 0
            while h < len(blocks) and blocks[h] in last_user:
                h += 1
            prev = last_user[blocks[h - 1]] if h else -1
        out.append(prev)
        for b in blocks:
            last_user[b] = i
        last_of_agent[(s, a)] = i
    return out


def _agent_names(t: Trace) -> list[str]:
    return [t.session_names[s] if a == 0 else f"{t.session_names[s]}/a{a}"
            for s, a in zip(t.session.tolist(), t.agent.tolist(), strict=True)]


def build_plans(spec: TraceReplay, t: Trace, ctx: WorkloadContext) -> list[RequestPlan]:
    """One :class:`RequestPlan` per trace row, in arrival order."""
    bs = t.block_size
    if spec.block_size != bs:
        raise ConfigError(f"workload 'trace': block_size is {spec.block_size} but the trace "
                          f"{spec.path!r} has block size {bs}; set block_size: {bs}")
    base = ctx.ids.reserve(t.num_blocks)
    ids = t.block_ids + base
    warm_n = spec.warm_prefix_tokens // bs
    warm = ctx.ids.take(warm_n)
    off = t.block_offsets.tolist()
    inp = t.input_tokens.tolist()
    out = t.output_tokens.tolist()
    partial = t.last_block_partial.tolist()
    plans: list[RequestPlan] = []
    empty = np.zeros(0, np.int64)
    for i in range(len(t)):
        blocks = ids[off[i]: off[i + 1]]
        n_tokens = inp[i]
        tail_id, tail_len = 0, 0
        if partial[i] and len(blocks):
            tail_len = n_tokens - (len(blocks) - 1) * bs
            tail_id = int(blocks[-1])
            blocks = blocks[:-1]
            if tail_len >= bs:  # a "partial" block that is full after all
                blocks, tail_id, tail_len = ids[off[i]: off[i + 1]], 0, 0
        else:
            rest = n_tokens - len(blocks) * bs
            if rest > 0:  # tokens after the last id: fresh, never shared
                extra, tail_len = divmod(rest, bs)
                fresh = ctx.ids.take(extra + (1 if tail_len else 0))
                if extra:
                    blocks = np.concatenate([blocks, fresh[:extra]])
                if tail_len:
                    tail_id = int(fresh[-1])
        if warm_n:
            k = min(warm_n, len(blocks))
            if k:
                blocks = np.concatenate([warm[:k], blocks[k:]])
        if not len(blocks) and not tail_len:
            blocks = empty
            tail_id, tail_len = int(ctx.ids.take(1)[0]), 1  # an empty prompt: one token
        output = max(1, out[i]) if spec.use_trace_output else spec.output_tokens
        plans.append(RequestPlan(blocks, tail_id, tail_len, bs, output, 0.0, "trace"))
    return plans
