"""pytest-ctxplat: SLO-based performance tests for LLM inference platforms.

The core (workloads, driver, servers, simulator, analysis, reports) is a library that
does not import pytest; :mod:`pytest_ctxplat.plugin` adapts it to pytest. The names an
extension author needs (a workload kind, a server launcher, a result sink) are here;
everything is imported on first use, so ``import pytest_ctxplat`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:
    from .api import (
        afind_knees,
        arun_workload,
        asimulate,
        asweep,
        find_knees,
        run_workload,
        simulate,
        sweep,
        write_html_report,
    )
    from .config import FieldError, Validated, setting
    from .errors import (
        ConfigError,
        CtxplatError,
        DriverError,
        ExtraMissing,
        ServerError,
        ServerStartError,
        SimulatorError,
        SLOViolation,
    )
    from .orchestrator import HttpTarget, InProcessTarget, Target, play
    from .report.records import RequestRecord
    from .report.result import RunResult
    from .servers.base import ServerHandle, ServerInfo
    from .servers.launchers import LaunchContext
    from .servers.probe import Capabilities
    from .servers.profiles import ServerProfile
    from .sim.config import SimConfig
    from .sim.hardware import HardwareProfile, load_hardware
    from .slo import SLOSpec, Verdict
    from .workload.kinds import KindRegistry
    from .workload.loader import load_workload
    from .workload.model import RequestPlan, SessionPlan, SessionStream, SpawnStep, TimedRequest
    from .workload.spec import WorkloadContext, WorkloadSpec

_LAZY = {
    # library API
    "arun_workload": "api", "asimulate": "api", "run_workload": "api", "simulate": "api",
    "asweep": "api", "sweep": "api", "afind_knees": "api", "find_knees": "api",
    "write_html_report": "api", "play": "orchestrator", "Target": "orchestrator",
    "HttpTarget": "orchestrator", "InProcessTarget": "orchestrator",
    # results and objectives
    "RunResult": "report.result", "RequestRecord": "report.records", "SLOSpec": "slo",
    "Verdict": "slo",
    # errors
    "CtxplatError": "errors", "ConfigError": "errors", "ServerError": "errors",
    "ServerStartError": "errors", "SLOViolation": "errors", "ExtraMissing": "errors",
    "DriverError": "errors", "SimulatorError": "errors",
    # configuration (declaring fields of a workload kind)
    "setting": "config", "FieldError": "config", "Validated": "config",
    # workload kinds
    "WorkloadSpec": "workload.spec", "WorkloadContext": "workload.spec",
    "SessionPlan": "workload.model", "RequestPlan": "workload.model",
    "SessionStream": "workload.model", "SpawnStep": "workload.model",
    "TimedRequest": "workload.model", "KindRegistry": "workload.kinds",
    "load_workload": "workload.loader",
    # server launchers
    "ServerHandle": "servers.base", "ServerInfo": "servers.base",
    "ServerProfile": "servers.profiles", "LaunchContext": "servers.launchers",
    "Capabilities": "servers.probe",
    # the simulator
    "SimConfig": "sim.config", "HardwareProfile": "sim.hardware",
    "load_hardware": "sim.hardware",
}  # fmt: skip

__all__ = [
    "Capabilities",
    "ConfigError",
    "CtxplatError",
    "DriverError",
    "ExtraMissing",
    "FieldError",
    "HardwareProfile",
    "HttpTarget",
    "InProcessTarget",
    "KindRegistry",
    "LaunchContext",
    "RequestPlan",
    "RequestRecord",
    "RunResult",
    "SLOSpec",
    "SLOViolation",
    "ServerError",
    "ServerHandle",
    "ServerInfo",
    "ServerProfile",
    "ServerStartError",
    "SessionPlan",
    "SessionStream",
    "SimConfig",
    "SimulatorError",
    "SpawnStep",
    "Target",
    "TimedRequest",
    "Validated",
    "Verdict",
    "WorkloadContext",
    "WorkloadSpec",
    "__version__",
    "afind_knees",
    "arun_workload",
    "asimulate",
    "asweep",
    "find_knees",
    "load_hardware",
    "load_workload",
    "play",
    "run_workload",
    "setting",
    "simulate",
    "sweep",
    "write_html_report",
]


def __getattr__(name: str) -> Any:
    """Import on first use, so ``import pytest_ctxplat`` (and the plugin) stays cheap."""
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
