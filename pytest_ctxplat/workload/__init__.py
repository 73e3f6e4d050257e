"""Workload model: specs, session plans, prompt synthesis."""

from .model import BlockIdAllocator, DesignedCache, RequestPlan, SessionPlan, SessionStream
from .spec import WorkloadContext, WorkloadSpec, available_workloads, load_workload, register_kind
from .tokens import TokenSpace

__all__ = [
    "BlockIdAllocator",
    "DesignedCache",
    "RequestPlan",
    "SessionPlan",
    "SessionStream",
    "TokenSpace",
    "WorkloadContext",
    "WorkloadSpec",
    "available_workloads",
    "load_workload",
    "register_kind",
]
