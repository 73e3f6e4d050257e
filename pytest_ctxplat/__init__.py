"""pytest-ctxplat: SLO-based performance tests for LLM inference platforms.

The core (workloads, driver, servers, simulator, analysis, reports) is a library that
does not import pytest; :mod:`pytest_ctxplat.plugin` adapts it to pytest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "CtxplatError",
    "RunResult",
    "SLOSpec",
    "SLOViolation",
    "__version__",
    "arun_workload",
    "load_workload",
    "run_workload",
]

if TYPE_CHECKING:
    from .api import arun_workload, run_workload
    from .errors import ConfigError, CtxplatError, SLOViolation
    from .report.result import RunResult
    from .slo import SLOSpec
    from .workload.loader import load_workload

_LAZY = {
    "arun_workload": ("api", "arun_workload"),
    "run_workload": ("api", "run_workload"),
    "ConfigError": ("errors", "ConfigError"),
    "CtxplatError": ("errors", "CtxplatError"),
    "SLOViolation": ("errors", "SLOViolation"),
    "RunResult": ("report.result", "RunResult"),
    "SLOSpec": ("slo", "SLOSpec"),
    "load_workload": ("workload.loader", "load_workload"),
}


def __getattr__(name: str) -> Any:
    """Import on first use, so ``import pytest_ctxplat`` (and the plugin) stays cheap."""
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
