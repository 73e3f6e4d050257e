"""The in-process target: the simulator's engines in this process, on the running
loop's clock (a :class:`~pytest_ctxplat.sim.virtual.VirtualEventLoop` for virtual time).

:class:`EngineSink` is a :class:`~pytest_ctxplat.driver.runner.RequestSink` that hands
requests straight to simulated engines and fills the request records as the HTTP client
would (times on the runner's clock). When the workload's block size equals the
simulator's, block hashes come from the plan's block ids (they are prefix-chained, so an
id is as good as a hash of its prefix): a 100k-token prompt costs no per-token work.
Blocks after the prompt's full blocks (the partial tail and the generated tokens) get
hashes unique to the request, as the generated tokens never match the next prompt over
HTTP either.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..driver.runner import OutgoingRequest, RequestSink
from ..errors import EngineStoppedError, RequestError, SimulatorError
from ..report.records import RequestRecord
from ..servers.scrape import MetricsSnapshot, parse_metrics
from ..servers.sim import SIM_CAPABILITIES
from ..sim.cache import block_hashes, mix64
from ..sim.cluster import Cluster
from ..sim.config import SimConfig
from ..sim.engine import Engine
from ..sim.hardware import HardwareProfile
from ..sim.metrics import SimMetrics
from ..sim.request import Request, RequestState
from ..sim.virtual import VirtualClock
from ..workload.spec import WorkloadSpec
from .core import Preparation

__all__ = ["EngineSink", "InProcessTarget"]

_K = np.uint64(0x9E3779B97F4A7C15)
_UNIQUE = np.uint64(0xA5A5_0000_0000_0000)


class EngineSink:
    """Sends the runner's requests to a :class:`Cluster` (or one engine) in process."""

    def __init__(self, target: Cluster | Engine, salt: int = 0, fast: bool = True) -> None:
        self.cluster = target if isinstance(target, Cluster) else None
        self.engine = target if isinstance(target, Engine) else None
        self.fast = fast
        self._salt = np.uint64(salt & 0xFFFF_FFFF_FFFF_FFFF)
        self._unique = itertools.count(1)
        self.fast_requests = 0

    @property
    def block_size(self) -> int:
        return (self.cluster.config if self.cluster else self.engine.config).block_size  # type: ignore[union-attr]

    def hashes(self, request: OutgoingRequest) -> list[int]:
        """Block hashes of prompt and output (see the module docstring)."""
        plan = request.plan
        bs = self.block_size
        total = (plan.prompt_tokens + plan.output_tokens) // bs
        if self.fast and plan.block_size == bs:
            self.fast_requests += 1
            ids = np.asarray(plan.blocks, dtype=np.int64).astype(np.uint64)
            with np.errstate(over="ignore"):
                head = mix64((ids ^ self._salt) * _K)
                base = np.uint64(next(self._unique) << 24) | _UNIQUE
                tail = mix64(np.arange(total - len(ids), dtype=np.uint64) + base)
            out: list[int] = np.concatenate([head, tail]).tolist()
            return out
        tokens = request.tokens()
        # the output tokens are unknown here; unique hashes stand in for them
        prompt = block_hashes(tokens, bs)
        n = (len(tokens) // bs)
        with np.errstate(over="ignore"):
            base = np.uint64(next(self._unique) << 24) | _UNIQUE
            rest: list[int] = mix64(np.arange(total - n, dtype=np.uint64) + base).tolist()
        return prompt + rest

    async def submit(self, request: OutgoingRequest, record: RequestRecord,
                     now: Callable[[], float]) -> None:
        plan = request.plan
        start = record.start_s = now()
        try:
            hashes = self.hashes(request)
            bs = self.block_size
            cands = hashes[: (plan.prompt_tokens - 1) // bs]
            session = record.session_id
            if self.engine is not None:
                req = await _run(self.engine.submit_hashes, plan.prompt_tokens,
                                 plan.output_tokens, hashes, record, now, start)
            else:
                assert self.cluster is not None
                if self.cluster.prefill is None:
                    engine = self.cluster.decode.pick(cands, session)
                    req = await _run(engine.submit_hashes, plan.prompt_tokens,
                                     plan.output_tokens, hashes, record, now, start)
                else:
                    pre = self.cluster.prefill.pick(cands, session)
                    first = await _run(pre.submit_hashes, plan.prompt_tokens, 1,
                                       hashes[: (plan.prompt_tokens + 1) // bs], None, now,
                                       start)
                    dec = self.cluster.decode.pick(cands, session)
                    req = await _run(dec.submit_hashes, plan.prompt_tokens,
                                     plan.output_tokens, hashes, record, now, start,
                                     remote_kv=True)
                    req.cached_tokens = first.cached_tokens
        except RequestError as exc:
            record.status = 400
            record.fail("http_status", f"HTTP 400: {exc}", now())
            return
        except SimulatorError as exc:
            record.fail("protocol_error", f"protocol_error: {type(exc).__name__}: {exc}",
                        now())
            return
        record.status = 200
        record.end_s = now()
        record.output_tokens = req.num_out
        record.cached_tokens = req.cached_tokens or 0
        record.usage_prompt_tokens = req.prompt_len
        record.finish_reason = "length"
        record.outcome = "ok" if req.num_out >= record.min_tokens else "incomplete"
        # in virtual time the client's clock is the model's: no discrepancy to measure
        record.model_ttft_s, record.model_e2e_s = record.ttft_s, record.e2e_s


async def _run(submit: Callable[..., Request], prompt_len: int, max_tokens: int,
               hashes: list[int], record: RequestRecord | None, now: Callable[[], float],
               start: float, remote_kv: bool = False) -> Request:
    """Submit one request and wait for its last token, recording TTFT and gaps."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Request] = loop.create_future()
    # token times come from the engine (a decode burst stamps each token with its own
    # step's time); the runner's clock is the loop's, offset to the run's start
    offset = now() - loop.time()
    last = [start]
    gaps = record.chunk_gaps_s if record is not None else None

    def on_token(req: Request, t_engine: float) -> None:
        if fut.done():
            return
        if req.state is RequestState.ABORTED:
            fut.set_exception(EngineStoppedError("the simulated engine stopped"))
            return
        if record is not None:
            t = t_engine + offset
            if req.num_out == 1:
                record.ttft_s = t - start
            else:
                gaps.append(t - last[0])  # type: ignore[union-attr]
            last[0] = t
        if req.finished:
            fut.set_result(req)

    if remote_kv:
        req = submit(prompt_len, max_tokens, hashes, on_token, remote_kv=True)
    else:
        req = submit(prompt_len, max_tokens, hashes, on_token)
    try:
        return await fut
    except asyncio.CancelledError:
        req.abort()
        if record is not None:
            record.output_tokens = req.num_out
            record.fail("cancelled", "cancelled: the run stopped", now())
        raise


class InProcessTarget:
    """Plays against a fresh :class:`~pytest_ctxplat.sim.cluster.Cluster` of
    ``profile`` (replicas, routers, disaggregation included) on the running loop's
    clock. Times are model time; metrics come from the same renderer as the HTTP
    simulator's ``/metrics``."""

    def __init__(self, profile: HardwareProfile) -> None:
        self.profile = profile
        self._cluster: Cluster | None = None
        self._metrics: SimMetrics | None = None
        self._sink: EngineSink | None = None

    @property
    def sink(self) -> RequestSink:
        assert self._sink is not None, "prepare() first"
        return self._sink

    async def __aenter__(self) -> InProcessTarget:
        return self

    async def __aexit__(self, *exc: object) -> None:
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            await cluster.stop()

    def _engines(self) -> list[Engine]:
        assert self._cluster is not None, "prepare() first"
        return self._cluster.engines

    async def prepare(self, spec: WorkloadSpec, *, seed: int, token_salt: int) -> Preparation:
        cluster = self._cluster = Cluster(SimConfig(seed=seed), self.profile,
                                          clock=VirtualClock())
        self._metrics = SimMetrics(cluster.engines[0], cluster.engines)
        self._sink = EngineSink(cluster, salt=token_salt)
        return Preparation(spec=spec, model=cluster.config.model,
                           server_block_size=self.profile.block_size)

    async def snapshot(self, *, final: bool = False) -> MetricsSnapshot | None:
        assert self._metrics is not None, "prepare() first"
        return parse_metrics(self._metrics.render().decode())

    async def gauges(self) -> Mapping[str, float]:
        """Read from the engines directly (no metrics rendering)."""
        engines = self._engines()
        return {
            "vllm:num_requests_running": float(sum(e.num_running for e in engines)),
            "vllm:num_requests_waiting": float(sum(e.num_waiting for e in engines)),
            "vllm:kv_cache_usage_perc": max(e.kv_cache_usage for e in engines),
            "vllm:prefix_cache_hits_total": float(sum(e.stats.prefix_cache_hits
                                                      for e in engines)),
            "vllm:prefix_cache_queries_total": float(sum(e.stats.prefix_cache_queries
                                                         for e in engines)),
        }

    def alive(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        model = self._cluster.config.model if self._cluster else self.profile.model.name
        return {"launcher": "sim-virtual", "url": None, "profile": self.profile.name,
                "model": model, "settings": self.profile.describe(), "time_scale": 1.0,
                "capabilities": SIM_CAPABILITIES.to_dict(), "alive_after_run": True,
                "log_tail": None,
                "diagnostics": {"fast_path_requests": self._sink.fast_requests
                                if self._sink else 0}}
