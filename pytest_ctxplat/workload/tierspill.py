"""The ``tier_spill`` kind: a working set of ``working_set_tokens`` made of distinct long
prefixes (``prefix_tokens`` each, one per session), re-sent in order ``cycles`` times.

The first cycle fills the cache (every prefix is new); in the later cycles a prefix hits
only if the cache still holds it after the rest of the set went by, so the hit rate of
the later cycles says whether the whole working set fits in a tier. Played at working
sets from a fraction of HBM to past the last tier, it shows where each tier runs out
(:mod:`pytest_ctxplat.orchestrator.knees`).

Requests are one-request sessions named ``c{cycle}-p{prefix}``; request ``g`` (counted
over all users) is prefix ``g % sets`` of cycle ``g // sets``, so the users together
walk the set round-robin.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from ..config import FieldError, setting
from .model import SessionPlan, SessionStream
from .spec import WorkloadContext, WorkloadSpec

__all__ = ["TierSpill", "fill_session"]


def fill_session(session_id: str) -> bool:
    """True for a request of the first (filling) cycle of a ``tier_spill`` run."""
    return session_id.startswith("c0-")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TierSpill(WorkloadSpec):
    """Distinct long prefixes re-sent in cycles: does the working set fit?"""

    kind = "tier_spill"
    users: int = setting(2, gt=0, doc="closed-loop users walking the set together")
    working_set_tokens: int = setting(262_144, gt=0, doc="tokens of distinct prefixes "
                                      "cycled through")
    prefix_tokens: int = setting(4096, gt=0, doc="tokens of each session's prefix "
                                 "(rounded down to whole blocks)")
    suffix_tokens: int = setting(32, ge=1, doc="unique tokens after the prefix")
    cycles: int = setting(3, ge=2, doc="times the set is sent (the first one fills)")
    output_tokens: int = setting(8, gt=0, doc="output tokens per request")

    def validate(self) -> None:
        if self.prefix_tokens < self.block_size:
            raise FieldError("prefix_tokens", f"must be >= block_size ({self.block_size})")
        if self.working_set_tokens < self.prefix_tokens:
            raise FieldError("working_set_tokens", "must be >= prefix_tokens "
                                                   f"({self.prefix_tokens})")

    @property
    def prefix_blocks(self) -> int:
        return self.prefix_tokens // self.block_size

    @property
    def sets(self) -> int:
        """Distinct prefixes in the working set."""
        return max(1, self.working_set_tokens // (self.prefix_blocks * self.block_size))

    @property
    def total_requests(self) -> int:
        return self.sets * self.cycles

    def user_sessions(self, user: int, ctx: WorkloadContext) -> Iterator[SessionPlan]:
        g = user
        while g < self.total_requests:
            cycle, i = divmod(g, self.sets)
            key = ("tier-spill", self.prefix_blocks, i)
            if key not in ctx.shared:
                ctx.shared[key] = ctx.ids.take(self.prefix_blocks)
            stream = SessionStream.start(self.block_size, ctx.ids, ctx.shared[key])
            stream.extend(self.suffix_tokens, role="user")
            yield SessionPlan(f"c{cycle}-p{i}",
                              iter([stream.request(self.output_tokens, 0.0, "tier_spill")]))
            g += self.users
