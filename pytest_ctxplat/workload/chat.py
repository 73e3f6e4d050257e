"""Built-in workload ``chat``: multi-turn chat sessions with a shared system prefix.

Each user plays sessions of ``turns`` requests. Every session starts with the same
system prompt (shared by all users, so it is a cross-user cache hit after the first
request); each turn appends the previous assistant answer and a new user message, so
request *k* re-sends request *k-1* in full plus new tokens: the multi-turn pattern in
which prefix caching pays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from ..config import FieldError, setting
from .model import RequestPlan, SessionPlan, SessionStream
from .spec import WorkloadContext, WorkloadSpec

__all__ = ["ChatSessions"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChatSessions(WorkloadSpec):
    """Multi-turn chat sessions sharing one system prompt.

    The shared prefix is ``system_prompt_tokens`` rounded down to whole blocks; the rest
    of the system prompt and everything after it is the session's own content.
    """

    kind = "chat"
    turns: int = setting(5, gt=0, doc="turns per session")
    think_time_s: float = setting(2.0, ge=0, doc="pause before each later turn")
    system_prompt_tokens: int = setting(1024, ge=0, doc="system prompt shared by all users")
    user_tokens: int = setting(128, ge=0, doc="tokens of each user message")
    start_spread_s: float = setting(1.0, ge=0, doc="users start uniformly over this long")
    recycle: bool = setting(False, doc="start a new session after the last turn")

    def validate(self) -> None:
        if self.system_prompt_tokens + self.user_tokens == 0:
            raise FieldError("user_tokens", "the first prompt would be empty "
                                            "(system_prompt_tokens + user_tokens = 0)")
        if self.recycle and self.duration_s is None and self.max_requests is None:
            raise FieldError("recycle", "recycle: true needs a bound: set duration_s or "
                                        "max_requests")

    def user_sessions(self, user: int, ctx: WorkloadContext) -> Iterator[SessionPlan]:
        shared = _shared_prefix(self, ctx)
        rng = ctx.rng("chat", user)
        n = 0
        while True:
            first_delay = rng.uniform(0, self.start_spread_s) if n == 0 else self.think_time_s
            yield SessionPlan(
                f"u{user}-s{n}", self._turns(SessionStream.start(self.block_size, ctx.ids, shared),
                                            first_delay)
            )
            n += 1
            if not self.recycle:
                return

    def _turns(self, stream: SessionStream, first_delay: float) -> Iterator[RequestPlan]:
        stream.extend(self.system_prompt_tokens % self.block_size + self.user_tokens)
        yield stream.request(self.output_tokens, first_delay, "turn")
        for _ in range(1, self.turns):
            stream.extend(self.output_tokens + self.user_tokens)
            yield stream.request(self.output_tokens, self.think_time_s, "turn")


def _shared_prefix(spec: ChatSessions, ctx: WorkloadContext) -> npt.NDArray[np.int64]:
    """The shared system prefix ids, allocated once per run and context."""
    key = ("chat-system", spec.system_prompt_tokens // spec.block_size)
    cache = ctx.shared
    if key not in cache:
        cache[key] = ctx.ids.take(spec.system_prompt_tokens // spec.block_size)
    ids: npt.NDArray[np.int64] = cache[key]
    return ids
