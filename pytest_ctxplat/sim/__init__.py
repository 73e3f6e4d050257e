"""The embedded simulator: an OpenAI-compatible server over a simulated vLLM engine
(continuous batching, chunked prefill, prefix-cached KV blocks, KV tiers below HBM, a
roofline timing model), for tests without a GPU; and in-process runs in virtual time.

Entry points: :class:`SimConfig`, :class:`Engine`, :func:`create_app`,
:func:`serve_in_thread` and :func:`main` (the ``python -m pytest_ctxplat.sim`` server);
:func:`load_profile` / :class:`Profile` (deployments as data), :class:`Cluster`
(replicas, routers, disaggregation), :func:`simulate` (a workload in virtual time),
:class:`EngineSink`, :class:`VirtualEventLoop` / :func:`run_virtual`.
"""

from __future__ import annotations

from pytest_ctxplat.sim.app import create_app
from pytest_ctxplat.sim.cache import PrefixCache, block_hashes
from pytest_ctxplat.sim.cluster import Cluster, Router
from pytest_ctxplat.sim.config import SimConfig
from pytest_ctxplat.sim.engine import Engine, EngineStats, KvLink, RequestError
from pytest_ctxplat.sim.inproc import EngineSink, asimulate, simulate
from pytest_ctxplat.sim.profile import Profile, builtin_profiles, load_profile
from pytest_ctxplat.sim.request import EngineStoppedError, Request, TokenEvent
from pytest_ctxplat.sim.roofline import RooflineTimingModel
from pytest_ctxplat.sim.server import SimServerHandle, main, serve_in_thread
from pytest_ctxplat.sim.timing import Clock, LinearTimingModel, RealClock, StepWork
from pytest_ctxplat.sim.tokenizer import Tokenizer
from pytest_ctxplat.sim.virtual import VirtualClock, VirtualEventLoop, run_virtual

__all__ = [
    "Clock",
    "Cluster",
    "Engine",
    "EngineSink",
    "EngineStats",
    "EngineStoppedError",
    "KvLink",
    "LinearTimingModel",
    "PrefixCache",
    "Profile",
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
    "asimulate",
    "block_hashes",
    "builtin_profiles",
    "create_app",
    "load_profile",
    "main",
    "run_virtual",
    "serve_in_thread",
    "simulate",
]
