"""Built-in kind ``long_sessions``: long, growing contexts with human-scale gaps.

A plainer agent model than ``coding_agent`` (no tool loops, compaction or subagents),
with few knobs, so a simulator study can vary one thing at a time. Each user plays
sessions back to back: a session starts from a shared prefix (system prompt and tool
definitions, the same for every user) plus ``initial_tokens`` of its own (repository
context), and each turn appends ``turn_tokens_min..max`` new tokens (tool output, user
text) plus the previous answer, after a think time drawn uniformly from
``think_min_s..think_max_s``. A session ends when its context would pass
``max_context_tokens``; the next one starts fresh.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator

from ..config import FieldError, setting
from .model import RequestPlan, SessionPlan, SessionStream
from .spec import WorkloadContext, WorkloadSpec

__all__ = ["LongSessions"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LongSessions(WorkloadSpec):
    """Long, growing contexts with human-scale gaps (see the module docstring)."""

    kind = "long_sessions"
    block_size: int = setting(16, gt=0, doc="tokens per block of the request plan")
    output_tokens: int = setting(300, gt=0, doc="output tokens per request")
    shared_prefix_tokens: int = setting(8192, ge=0, doc="prefix shared by every user")
    initial_tokens: int = setting(12_000, ge=0, doc="a session's own first context")
    turn_tokens_min: int = setting(1000, gt=0, doc="fewest tokens a turn adds")
    turn_tokens_max: int = setting(4000, gt=0, doc="most tokens a turn adds")
    max_context_tokens: int = setting(100_000, gt=0, doc="a session ends before this")
    think_min_s: float = setting(10.0, ge=0, doc="shortest pause between turns")
    think_max_s: float = setting(150.0, ge=0, doc="longest pause between turns")
    start_spread_s: float = setting(60.0, ge=0, doc="users start uniformly over this long")

    def validate(self) -> None:
        if self.think_min_s > self.think_max_s:
            raise FieldError("think_max_s", f"must be >= think_min_s ({self.think_min_s:g})")
        if self.turn_tokens_min > self.turn_tokens_max:
            raise FieldError("turn_tokens_max", "must be >= turn_tokens_min "
                                                f"({self.turn_tokens_min})")
        if self.shared_prefix_tokens + self.initial_tokens >= self.max_context_tokens:
            raise FieldError("max_context_tokens", "the first prompt (shared_prefix_tokens "
                             "+ initial_tokens) must fit below it")

    def user_sessions(self, user: int, ctx: WorkloadContext) -> Iterator[SessionPlan]:
        # the random-stream and shared-prefix keys keep their first name, so seeded runs
        # (and the figures the simulator's findings are checked against) do not change
        key = ("sim-agentlike", self.shared_prefix_tokens // self.block_size)
        if key not in ctx.shared:
            ctx.shared[key] = ctx.ids.take(self.shared_prefix_tokens // self.block_size)
        shared = ctx.shared[key]
        rng = ctx.rng("sim-agentlike", user)
        n = 0
        while True:
            stream = SessionStream.start(self.block_size, ctx.ids, shared)
            first = rng.uniform(0, self.start_spread_s) if n == 0 else rng.uniform(
                self.think_min_s, self.think_max_s)
            yield SessionPlan(f"u{user}-s{n}", self._turns(stream, first, rng))
            n += 1

    def _turns(self, stream: SessionStream, first_delay: float, rng: random.Random
               ) -> Iterator[RequestPlan]:
        stream.extend(self.initial_tokens)
        yield stream.request(self.output_tokens, first_delay, "turn")
        while True:
            add = rng.randint(self.turn_tokens_min, self.turn_tokens_max)
            if stream.tokens + self.output_tokens + add + self.output_tokens \
                    > self.max_context_tokens:
                return
            stream.extend(self.output_tokens + add)
            yield stream.request(self.output_tokens, rng.uniform(self.think_min_s,
                                                                 self.think_max_s), "turn")
