"""The embedded simulator: an OpenAI-compatible server over a simulated vLLM engine
(continuous batching, chunked prefill, prefix-cached KV blocks), for tests without a GPU.

Entry points: :class:`SimConfig`, :class:`Engine`, :func:`create_app`,
:func:`serve_in_thread` and :func:`main` (the ``python -m pytest_ctxplat.sim`` server).
"""

from __future__ import annotations

from pytest_ctxplat.sim.app import create_app
from pytest_ctxplat.sim.cache import PrefixCache, block_hashes
from pytest_ctxplat.sim.config import SimConfig
from pytest_ctxplat.sim.engine import Engine, EngineStats, RequestError
from pytest_ctxplat.sim.request import EngineStoppedError, Request, TokenEvent
from pytest_ctxplat.sim.server import SimServerHandle, main, serve_in_thread
from pytest_ctxplat.sim.timing import Clock, LinearTimingModel, RealClock, StepWork
from pytest_ctxplat.sim.tokenizer import Tokenizer

__all__ = [
    "Clock",
    "Engine",
    "EngineStats",
    "EngineStoppedError",
    "LinearTimingModel",
    "PrefixCache",
    "RealClock",
    "Request",
    "RequestError",
    "SimConfig",
    "SimServerHandle",
    "StepWork",
    "TokenEvent",
    "Tokenizer",
    "block_hashes",
    "create_app",
    "main",
    "serve_in_thread",
]
