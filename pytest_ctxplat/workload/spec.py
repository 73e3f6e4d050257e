"""Workload specifications: the base of every workload kind.

A workload *kind* is a frozen keyword-only dataclass (a subclass of
:class:`WorkloadSpec`) with a ``kind`` name; its fields declare their constraints with
:func:`~pytest_ctxplat.config.setting`, so a bad value from a YAML definition, a marker
or the command line is an error naming where it came from and what is valid. Kinds are
found by name in a :class:`~pytest_ctxplat.workload.kinds.KindRegistry`; definitions
(YAML files naming a kind) are read by :mod:`pytest_ctxplat.workload.loader`.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from ..config import Validated, setting
from .load import LoadShape
from .model import BlockIdAllocator, SessionPlan, TimedRequest

__all__ = ["APIS", "PART_ID_STRIDE", "WorkloadContext", "WorkloadSpec"]

APIS = ("completions", "chat")

# Block ids of part ``i`` of a split run start at ``1 + i * PART_ID_STRIDE``: the parts'
# ids never meet (2**40 ids a part), so no part is served another part's blocks.
PART_ID_STRIDE = 1 << 40


@dataclasses.dataclass(slots=True)
class WorkloadContext:
    """What a workload needs to generate sessions: seeded randomness and block ids."""

    seed: int
    ids: BlockIdAllocator = dataclasses.field(default_factory=BlockIdAllocator)
    shared: dict[object, Any] = dataclasses.field(default_factory=dict)

    def rng(self, *key: object) -> random.Random:
        """An independent, reproducible random stream for ``key`` (e.g. a user index)."""
        return random.Random(repr((self.seed, *key)))

    @classmethod
    def for_part(cls, seed: int, part: int) -> WorkloadContext:
        """The context of part ``part`` of a split run: same seed, its own block ids."""
        return cls(seed=seed, ids=BlockIdAllocator(1 + part * PART_ID_STRIDE))


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorkloadSpec(Validated):
    """Base of all workload kinds. Subclasses set ``kind`` and add their fields.

    Common fields bound the run: ``duration_s`` (stop starting requests after this many
    seconds; in-flight requests finish) and ``max_requests``. ``load`` shapes the load
    (:class:`~pytest_ctxplat.workload.load.LoadShape`: ramps, stages, open-loop arrivals,
    token budgets). ``designed_ttl_s`` and ``designed_capacity_tokens`` add designed hit
    rates for a cache with that TTL or capacity beside the infinite one.
    """

    kind: ClassVar[str] = ""
    users: int = setting(4, gt=0, doc="closed-loop users (tasks that each send one request "
                         "at a time)")
    duration_s: float | None = setting(None, gt=0, doc="stop starting requests after this "
                                       "many seconds")
    max_requests: int | None = setting(None, gt=0, doc="stop after this many requests")
    block_size: int = setting(64, gt=0, doc="tokens per block of the request plan")
    output_tokens: int = setting(64, gt=0, doc="output tokens per request")
    api: str = setting("completions", choices=APIS, doc="completions (token ids) or chat")
    load: LoadShape = dataclasses.field(default_factory=LoadShape)
    designed_ttl_s: tuple[float, ...] = setting((), gt=0, doc="designed hit rates for "
                                                "these cache TTLs too")
    designed_capacity_tokens: tuple[int, ...] = setting((), gt=0, doc="designed hit rates "
                                                        "for these LRU capacities too")

    def user_sessions(self, user: int, ctx: WorkloadContext) -> Iterator[SessionPlan]:
        """Sessions one user plays, in order. The runner stops pulling at its bounds."""
        raise NotImplementedError

    def prepare(self, ctx: WorkloadContext) -> None:
        """Do expensive set-up (reading a trace) before the run's clock starts."""

    def user_count(self) -> int:
        """How many closed-loop user tasks the runner starts."""
        return self.load.max_users(self.users)

    def run_notes(self) -> dict[str, str]:
        """Notes for the run's result about the workload's input (after ``prepare``)."""
        return {}

    def timed_requests(self, ctx: WorkloadContext) -> Iterator[TimedRequest] | None:
        """Requests at fixed times, in time order (trace replay), or None: the workload
        is played by users (``user_sessions``)."""
        return None

    @classmethod
    def defer_to_overrides(cls, values: dict[str, Any], overrides: Mapping[str, Any]
                           ) -> dict[str, Any]:
        """A definition's ``values`` given way to ``overrides`` set on top of it (beyond
        replacing the same keys): by default unchanged."""
        return values

    @property
    def bound_s(self) -> float | None:
        """The run's time bound: ``duration_s``, else the length of the load stages."""
        return self.duration_s if self.duration_s is not None else self.load.stages_duration_s

    def describe(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["kind"] = self.kind
        return d

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]
