"""Built-in kinds ``coding_agent`` and ``coding_swarm``: agentic coding sessions.

A coding agent's context starts with a system prompt and tool definitions shared by
every user (a cross-user cache hit), then the session's task. Each human turn runs a
tool-call loop: the model answers with a tool call, the tool's result is appended, the
model is called again after the tool's latency, until a final answer; the next human
message comes after a long-tailed think time. The context grows until it passes
``context_limit_tokens``; then a compaction request summarises it and the session goes
on from the shared prefix plus the summary (new ids after the shared prefix, as in
Claude Code's auto-compaction).

A swarm's orchestrators sometimes spawn subagents (several in parallel) instead of
calling a tool: each subagent's context is the shared prefix plus a task from the
parent; the parent waits for all of them and appends their results. Subagents are
short-lived (a fresh context per task) or persistent (a slot keeps its context and
the next task is appended to it).

Defaults follow 710 public Claude Code sessions (see the workloads reference): output
median 256 tokens; tool latency log-normal (median 6 s) and human think time log-normal
(median 240 s, sigma 2.2, capped at 4 h), which together give gaps between the starts of
a main agent's requests of median about 15 s and mean about 135 s, 4% over 5 minutes and
0.9% over an hour (the traces: median 18 s, mean 152 s, 5% and 0.5%); starting context
about 17k tokens, compaction near 110k.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Generator, Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from ..config import FieldError, setting
from .dist import AgentDistributions, Dist
from .model import RequestPlan, SessionPlan, SessionStream, SpawnStep, Step
from .spec import WorkloadContext, WorkloadSpec

__all__ = ["CodingAgent", "CodingSwarm"]

# numbers and the distributions (``distributions:``) that replace their draws
REPLACED_BY: dict[str, tuple[str, ...]] = {
    "output_tokens": ("output_tokens",), "output_sigma": ("output_tokens",),
    "initial_context_tokens": ("initial_context_tokens",), "user_tokens": ("user_tokens",),
    "tool_result_tokens": ("tool_result_tokens",), "tool_result_sigma": ("tool_result_tokens",),
    "tool_latency_s": ("tool_time_s",), "think_time_median_s": ("think_time_s",),
    "think_time_sigma": ("think_time_s",), "think_time_max_s": ("think_time_s",),
    "tool_steps_mean": ("tool_steps",), "human_turns": ("human_turns", "session_requests"),
    "context_limit_tokens": ("compact_at_tokens",), "summary_tokens": ("summary_tokens",),
    "subagents_max": (), "subagent_task_tokens": ("subagent_task_tokens",),
    "subagent_tool_steps_mean": ("subagent_tool_steps",),
    "subagent_result_tokens": ("subagent_result_tokens",),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class CodingAgent(WorkloadSpec):
    """Agentic coding sessions: shared prefix, tool loops, human turns, compaction."""

    kind = "coding_agent"
    users: int = setting(8, gt=0, doc="concurrent agents (users)")
    output_tokens: int = setting(256, gt=0, doc="median output tokens per request")
    output_sigma: float = setting(0.8, ge=0, doc="log-normal sigma of output tokens")
    system_prompt_tokens: int = setting(1300, ge=0, doc="system prompt (shared by all)")
    tool_tokens: int = setting(7600, ge=0, doc="tool definitions (shared by all)")
    initial_context_tokens: int = setting(8000, ge=0, doc="the session's task and files")
    user_tokens: int = setting(200, ge=0, doc="tokens of each human message")
    human_turns: int = setting(5, gt=0, doc="human turns per session")
    tool_steps_mean: float = setting(8.0, ge=0, doc="mean tool calls per human turn")
    tool_result_tokens: int = setting(1200, ge=0, doc="median tokens of a tool result")
    tool_result_sigma: float = setting(1.0, ge=0, doc="log-normal sigma of tool results")
    tool_latency_s: float = setting(6.0, ge=0, doc="median tool latency")
    think_time_median_s: float = setting(240.0, ge=0, doc="median human think time")
    think_time_sigma: float = setting(2.2, ge=0, doc="log-normal sigma of think time")
    think_time_max_s: float = setting(14400.0, ge=0, doc="longest think time")
    context_limit_tokens: int = setting(110_000, gt=0, doc="compact above this context")
    summary_tokens: int = setting(4000, ge=0, doc="context size after a compaction")
    start_spread_s: float = setting(10.0, ge=0, doc="agents start uniformly over this long")
    recycle: bool = setting(False, doc="start a new session after the last turn")
    compaction_request: bool = setting(True, doc="a compaction sends the whole context "
                                       "once more (the summarising call) before it shrinks")
    max_context_tokens: int | None = setting(None, gt=0, doc="no request's context is "
                                             "larger: compaction comes first, and a "
                                             "session starts from at most half of it")
    rewrite_probability: float = setting(0.0, ge=0, le=1, doc="chance that a tool step "
                                         "rewrites the context after a cut (new ids)")
    distributions: AgentDistributions = dataclasses.field(default_factory=AgentDistributions)

    def validate(self) -> None:
        if self.think_time_max_s < self.think_time_median_s:
            raise FieldError("think_time_max_s", "must be >= think_time_median_s "
                                                 f"({self.think_time_median_s:g})")
        floor = self.shared_tokens + self.summary_tokens + self.user_tokens + self.block_size
        if self.context_limit_tokens <= floor:
            raise FieldError(
                "context_limit_tokens", f"must be above the context right after a compaction "
                f"({floor} tokens: shared prefix + summary + a user message + a block), got "
                f"{self.context_limit_tokens}")
        if self.max_context_tokens is not None and self.max_context_tokens <= 2 * floor:
            raise FieldError("max_context_tokens", f"must be above twice the context right "
                             f"after a compaction ({2 * floor} tokens), got "
                             f"{self.max_context_tokens}")
        if self.recycle and self.bound_s is None and self.max_requests is None:
            raise FieldError("recycle", "recycle: true needs a bound: set duration_s or "
                                        "max_requests")

    @classmethod
    def defer_to_overrides(cls, values: dict[str, Any], overrides: Mapping[str, Any]
                           ) -> dict[str, Any]:
        """A number set on top of a definition (a marker's ``think_time_median_s=2``)
        wins over the definition's distribution of the same quantity."""
        dists = values.get("distributions")
        if not isinstance(dists, Mapping) or "distributions" in overrides:
            return values
        drop = {d for k in overrides for d in REPLACED_BY.get(k, ())}
        if not drop & dists.keys():
            return values
        return {**values, "distributions": {k: v for k, v in dists.items() if k not in drop}}

    @property
    def shared_tokens(self) -> int:
        return self.system_prompt_tokens + self.tool_tokens

    # -- random draws -------------------------------------------------------------------
    def _fitted(self, name: str) -> Dist | None:
        d: Dist | None = getattr(self.distributions, name)
        return d

    def _count(self, name: str, rng: random.Random, default: int, least: int = 0) -> int:
        """A whole number from distribution ``name`` (``default`` when not given)."""
        d = self._fitted(name)
        return default if d is None else max(least, round(d.sample(rng)))

    def _output(self, rng: random.Random) -> int:
        d = self._fitted("output_tokens")
        if d is not None:
            return max(1, int(d.sample(rng)))
        v = rng.lognormvariate(math.log(self.output_tokens), self.output_sigma)
        return max(1, min(int(v), 8 * self.output_tokens))

    def _tool_result(self, rng: random.Random) -> int:
        d = self._fitted("tool_result_tokens")
        if d is not None:
            return max(0, int(d.sample(rng)))
        if self.tool_result_tokens == 0:
            return 0
        v = rng.lognormvariate(math.log(self.tool_result_tokens), self.tool_result_sigma)
        return max(1, min(int(v), 8 * self.tool_result_tokens))

    def _tool_latency(self, rng: random.Random) -> float:
        d = self._fitted("tool_time_s")
        if d is not None:
            return max(0.0, d.sample(rng))
        if self.tool_latency_s == 0:
            return 0.0
        return min(rng.lognormvariate(math.log(self.tool_latency_s), 1.0),
                   20 * self.tool_latency_s)

    def _think(self, rng: random.Random) -> float:
        d = self._fitted("think_time_s")
        if d is not None:
            return max(0.0, d.sample(rng))
        if self.think_time_median_s == 0:
            return 0.0
        v = rng.lognormvariate(math.log(self.think_time_median_s), self.think_time_sigma)
        return min(v, self.think_time_max_s)

    @staticmethod
    def _steps(rng: random.Random, mean: float) -> int:
        """Geometric number of tool calls (>= 0) with the given mean."""
        if mean <= 0:
            return 0
        p = 1.0 / (mean + 1.0)
        return int(math.log(1.0 - rng.random()) / math.log(1.0 - p))

    # -- sessions -----------------------------------------------------------------------
    def shared_prefix(self, ctx: WorkloadContext) -> npt.NDArray[np.int64]:
        """System prompt + tool definition ids shared by every user (whole blocks)."""
        key = ("agent-system", self.shared_tokens // self.block_size)
        if key not in ctx.shared:
            ctx.shared[key] = ctx.ids.take(self.shared_tokens // self.block_size)
        ids: npt.NDArray[np.int64] = ctx.shared[key]
        return ids

    def _fresh_context(self, ctx: WorkloadContext, first: int, role: str) -> SessionStream:
        stream = SessionStream.start(self.block_size, ctx.ids, self.shared_prefix(ctx))
        stream.extend(self.shared_tokens % self.block_size, role="system")
        stream.extend(first, role=role)
        return stream

    def user_sessions(self, user: int, ctx: WorkloadContext) -> Iterator[SessionPlan]:
        rng = ctx.rng(self.kind, user)
        n = 0
        while True:
            sid = f"u{user}-s{n}"
            first = rng.uniform(0, self.start_spread_s) if n == 0 else self._think(rng)
            yield SessionPlan(sid, self._session(sid, ctx, rng, first))
            n += 1
            if not self.recycle:
                return

    def _limit(self, rng: random.Random, floor: int) -> int:
        """The context size that triggers the next compaction (at least 1.5 x ``floor``, the
        context it starts from)."""
        limit = max(self._count("compact_at_tokens", rng, self.context_limit_tokens),
                    floor + floor // 2)
        return limit if self.max_context_tokens is None else min(limit,
                                                                 self.max_context_tokens)

    def _session(self, sid: str, ctx: WorkloadContext, rng: random.Random,
                 first_delay: float) -> Iterator[Step]:
        first = self._count("initial_context_tokens", rng, self.initial_context_tokens)
        if self.max_context_tokens is not None:
            first = min(first, self.max_context_tokens // 2 - self.shared_tokens)
        stream = self._fresh_context(ctx, first, "user")
        delay = first_delay
        spawner = self._spawner(sid, ctx, rng)
        limit = self._limit(rng, stream.tokens)
        left = self._count("session_requests", rng, -1, least=1)
        turns = self._count("human_turns", rng, self.human_turns, least=1) if left < 0 \
            else left
        for turn in range(turns):
            if turn:
                stream.extend(self._count("user_tokens", rng, self.user_tokens), role="user")
                delay = self._think(rng)
            steps = self._count("tool_steps", rng, -1)
            steps = self._steps(rng, self.tool_steps_mean) if steps < 0 else steps
            for step in range(steps + 1):
                if stream.tokens >= limit:
                    summary = self._count("summary_tokens", rng, self.summary_tokens)
                    if self.compaction_request:
                        yield stream.request(min(summary, 8 * self.output_tokens) or 1,
                                             delay, "compact")
                        delay = 0.0
                    stream = self._fresh_context(ctx, summary, "user")
                    limit = self._limit(rng, stream.tokens)
                elif step and self.rewrite_probability and \
                        rng.random() < self.rewrite_probability:
                    stream = self._rewrite(ctx, stream, rng)
                out = self._output(rng)
                final = step == steps or left == 1
                yield stream.request(out, delay, "answer" if final else "tool_call")
                left -= 1
                if left == 0:
                    return
                if final:
                    stream.extend(out, role="assistant")
                    break
                stream.extend(out, role="tool_call")
                spawn = spawner.send(None) if spawner is not None else None
                if spawn is not None:
                    step_, result_tokens = spawn
                    yield step_
                    stream.extend(result_tokens, role="tool")
                    delay = 0.0
                else:
                    stream.extend(self._tool_result(rng), role="tool")
                    delay = self._tool_latency(rng)

    def _rewrite(self, ctx: WorkloadContext, stream: SessionStream, rng: random.Random
                 ) -> SessionStream:
        """The context with everything after a cut replaced by new content (same size)."""
        d = self._fitted("rewrite_keep_fraction")
        frac = min(1.0, max(0.0, d.sample(rng))) if d is not None else 0.5
        full = stream.tokens // self.block_size
        keep = max(self.shared_tokens // self.block_size, int(full * frac))
        kept = stream.request(1).blocks[:keep]
        fresh = SessionStream.start(self.block_size, ctx.ids, kept)
        fresh.extend(stream.tokens - len(kept) * self.block_size, role="user")
        return fresh

    def _spawner(self, sid: str, ctx: WorkloadContext, rng: random.Random
                 ) -> Generator[tuple[SpawnStep, int] | None, None, None] | None:
        """Plain agents never spawn; :class:`CodingSwarm` overrides this."""
        return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class CodingSwarm(CodingAgent):
    """Many orchestrators, each a coding agent that spawns subagents."""

    kind = "coding_swarm"
    users: int = setting(32, gt=0, doc="concurrent orchestrators (users)")
    spawn_probability: float = setting(0.2, ge=0, le=1, doc="chance that a step spawns "
                                       "subagents instead of calling a tool")
    subagents_max: int = setting(4, gt=0, doc="most subagents spawned at once")
    subagent_task_tokens: int = setting(1500, ge=0, doc="task a subagent starts with")
    subagent_tool_steps_mean: float = setting(6.0, ge=0, doc="mean tool calls of a subagent")
    subagent_result_tokens: int = setting(800, ge=0, doc="result appended to the parent")
    persistent_subagents: bool = setting(False, doc="subagents keep their context")

    def _spawner(self, sid: str, ctx: WorkloadContext, rng: random.Random
                 ) -> Generator[tuple[SpawnStep, int] | None, None, None]:
        slots: list[SessionStream] = []
        spawned = 0
        while True:
            if rng.random() >= self.spawn_probability:
                yield None
                continue
            count = self._count("subagents", rng, 0, least=1) \
                if self.distributions.subagents is not None else 0
            count = min(count, self.subagents_max) or rng.randint(1, self.subagents_max)
            children = []
            for k in range(count):
                child_rng = random.Random(rng.getrandbits(64))
                if self.persistent_subagents and k < len(slots):
                    stream = slots[k]
                    stream.extend(self._task(rng), role="user")
                    child_id = f"{sid}-p{k}"
                else:
                    stream = self._fresh_context(ctx, self._task(rng), "user")
                    if self.persistent_subagents:
                        slots.append(stream)
                        child_id = f"{sid}-p{k}"
                    else:
                        child_id = f"{sid}-a{spawned}"
                        spawned += 1
                children.append(SessionPlan(child_id, self._subagent(stream, child_rng)))
            yield SpawnStep(tuple(children), delay_s=0.0, wait=True), sum(
                self._count("subagent_result_tokens", rng, self.subagent_result_tokens)
                for _ in range(count))

    def _task(self, rng: random.Random) -> int:
        return self._count("subagent_task_tokens", rng, self.subagent_task_tokens)

    def _subagent(self, stream: SessionStream, rng: random.Random) -> Iterator[Step]:
        delay = 0.0
        steps = self._count("subagent_tool_steps", rng, -1)
        steps = self._steps(rng, self.subagent_tool_steps_mean) if steps < 0 else steps
        for step in range(steps + 1):
            if stream.tokens >= self.context_limit_tokens:
                return  # a subagent that fills its context hands back what it has
            out = self._output(rng)
            final = step == steps
            plan: RequestPlan = stream.request(out, delay, "sub_answer" if final else "sub_tool")
            yield plan
            if final:
                stream.extend(out, role="assistant")
                return
            stream.extend(out, role="tool_call")
            stream.extend(self._tool_result(rng), role="tool")
            delay = self._tool_latency(rng)
