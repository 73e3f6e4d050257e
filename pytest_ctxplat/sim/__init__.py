"""The embedded simulator: a model of a vLLM-like server (continuous batching, chunked
prefill, prefix-cached KV blocks, KV tiers below HBM, a roofline timing model) and an
OpenAI-compatible HTTP app over it, for tests without a GPU.

It knows requests, blocks, tiers and time, never the client, the workload, SLOs or
reports: workloads are played against it by :mod:`pytest_ctxplat.orchestrator` (over
HTTP, or in process on a virtual clock: :func:`pytest_ctxplat.simulate`).

Names are imported on first use, so ``import pytest_ctxplat.sim.hardware`` does not
load the HTTP server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .cache import PrefixCache, block_hashes
    from .cluster import Cluster, Router
    from .config import SimConfig
    from .engine import Engine, KvLink, RequestError
    from .hardware import HardwareProfile, hardware_names, load_hardware
    from .request import EngineStoppedError, Request, TokenEvent
    from .roofline import RooflineTimingModel
    from .server import SimServerHandle, main, serve_in_thread
    from .stats import EngineStats
    from .timing import Clock, LinearTimingModel, RealClock, StepWork
    from .tokenizer import Tokenizer
    from .virtual import VirtualClock, VirtualEventLoop, run_virtual

_LAZY = {
    "create_app": "app", "PrefixCache": "cache", "block_hashes": "cache",
    "Cluster": "cluster", "Router": "cluster", "SimConfig": "config", "Engine": "engine",
    "EngineStats": "stats", "KvLink": "engine", "RequestError": "engine",
    "HardwareProfile": "hardware", "hardware_names": "hardware", "load_hardware": "hardware",
    "EngineStoppedError": "request", "Request": "request", "TokenEvent": "request",
    "RooflineTimingModel": "roofline", "SimServerHandle": "server", "main": "server",
    "serve_in_thread": "server", "Clock": "timing", "LinearTimingModel": "timing",
    "RealClock": "timing", "StepWork": "timing", "Tokenizer": "tokenizer",
    "VirtualClock": "virtual", "VirtualEventLoop": "virtual", "run_virtual": "virtual",
}  # fmt: skip

__all__ = [
    "Clock",
    "Cluster",
    "Engine",
    "EngineStats",
    "EngineStoppedError",
    "HardwareProfile",
    "KvLink",
    "LinearTimingModel",
    "PrefixCache",
    "RealClock",
    "Request",
    "RequestError",
    "RooflineTimingModel",
    "Router",
    "SimConfig",
    "SimServerHandle",
    "StepWork",
    "TokenEvent",
    "Tokenizer",
    "VirtualClock",
    "VirtualEventLoop",
    "block_hashes",
    "create_app",
    "hardware_names",
    "load_hardware",
    "main",
    "run_virtual",
    "serve_in_thread",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
