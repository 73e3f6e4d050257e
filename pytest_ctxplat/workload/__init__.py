"""Workload model: specs, session plans, load shapes, prompt synthesis, planning."""

from .load import LoadShape, Stage
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
from .spec import WorkloadContext, WorkloadSpec, available_workloads, load_workload, register_kind
from .tokens import TokenSpace

__all__ = [
    "BlockIdAllocator",
    "DesignedCache",
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
    "register_kind",
]
