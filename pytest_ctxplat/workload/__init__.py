"""Workload model: specs, session plans, load shapes, prompt synthesis, planning."""

from .kinds import BUILTIN_KINDS, KindRegistry
from .load import LoadShape, Stage
from .loader import available_workloads, load_workload, resolve_workload
from .model import (
    BlockIdAllocator,
    DesignedCache,
    MessageLog,
    RequestPlan,
    SessionPlan,
    SessionStream,
    SpawnStep,
    TimedRequest,
)
from .plan import Plan, plan_workload
from .spec import WorkloadContext, WorkloadSpec
from .tokens import TokenSpace

__all__ = [
    "BUILTIN_KINDS",
    "BlockIdAllocator",
    "DesignedCache",
    "KindRegistry",
    "LoadShape",
    "MessageLog",
    "Plan",
    "RequestPlan",
    "SessionPlan",
    "SessionStream",
    "SpawnStep",
    "Stage",
    "TimedRequest",
    "TokenSpace",
    "WorkloadContext",
    "WorkloadSpec",
    "available_workloads",
    "load_workload",
    "plan_workload",
    "resolve_workload",
]
