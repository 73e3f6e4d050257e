"""The driver and the simulator in one process on one (virtual) clock.

:class:`EngineSink` is a :class:`~pytest_ctxplat.driver.runner.RequestSink` that hands
requests straight to simulated engines and fills the request records as the HTTP client
would (times on the runner's clock). When the workload's block size equals the
simulator's, block hashes come from the plan's block ids (they are prefix-chained, so an
id is as good as a hash of its prefix): a 100k-token prompt costs no per-token work.
Blocks after the prompt's full blocks (the partial tail and the generated tokens) get
hashes unique to the request, as the generated tokens never match the next prompt over
HTTP either.

:func:`simulate` plays a workload against a profile on a
:class:`~pytest_ctxplat.sim.virtual.VirtualEventLoop` and returns the same
:class:`~pytest_ctxplat.report.result.RunResult` as an HTTP run (``ctxplat simulate``).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import itertools
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pytest_ctxplat.driver.records import RequestRecord
from pytest_ctxplat.driver.runner import OutgoingRequest, Runner, RunOptions
from pytest_ctxplat.driver.scrape import parse_metrics
from pytest_ctxplat.report.result import RunResult
from pytest_ctxplat.sim.cache import block_hashes, mix64
from pytest_ctxplat.sim.cluster import Cluster
from pytest_ctxplat.sim.config import SimConfig
from pytest_ctxplat.sim.engine import Engine, RequestError
from pytest_ctxplat.sim.metrics import SimMetrics
from pytest_ctxplat.sim.profile import Profile, load_profile
from pytest_ctxplat.sim.request import Request, RequestState
from pytest_ctxplat.sim.virtual import VirtualClock, run_virtual
from pytest_ctxplat.workload.spec import WorkloadSpec, coerce_fields, load_workload

__all__ = ["EngineSink", "asimulate", "simulate"]

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
            record.end_s = now()
            record.error = f"HTTP 400: {exc}"
            return
        except Exception as exc:
            record.end_s = now()
            record.error = f"{type(exc).__name__}: {exc}"
            return
        record.status = 200
        record.end_s = now()
        record.output_tokens = req.num_out
        record.cached_tokens = req.cached_tokens or 0
        record.usage_prompt_tokens = req.prompt_len


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
            fut.set_exception(RuntimeError("the simulated engine stopped"))
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
            record.error = "cancelled"
            record.end_s = now()
        raise


def simulate(workload: str | WorkloadSpec, profile: str | Profile, **kwargs: Any
             ) -> RunResult:
    """Play ``workload`` against ``profile`` in virtual time (see :func:`asimulate`)."""
    return run_virtual(asimulate(workload, profile, **kwargs))


async def asimulate(
    workload: str | WorkloadSpec,
    profile: str | Profile,
    *,
    overrides: Mapping[str, Any] | None = None,
    profile_overrides: Mapping[str, Any] | None = None,
    slo: Any = None,
    seed: int = 0,
    name: str = "simulate",
    results_dir: str | Path | None = None,
    sample_every_s: float = 5.0,
) -> RunResult:
    """Run on the current loop (a :class:`VirtualEventLoop` for virtual time)."""
    import dataclasses

    from pytest_ctxplat.api import build_result
    from pytest_ctxplat.report.result import write_json
    from pytest_ctxplat.slo import SLOSpec, parse_slo

    if isinstance(workload, WorkloadSpec):
        spec = (dataclasses.replace(workload, **coerce_fields(type(workload), overrides, name))
                if overrides else workload)
    else:
        spec = load_workload(workload, overrides)
    prof = profile if isinstance(profile, Profile) else load_profile(profile, profile_overrides)
    slo_spec = slo if isinstance(slo, SLOSpec) or slo is None else parse_slo(slo, name)
    started_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    wall0 = time.perf_counter()
    cluster = Cluster(SimConfig(seed=seed), prof, clock=VirtualClock())
    metrics = SimMetrics(cluster.engines[0], cluster.engines)
    before = parse_metrics(metrics.render().decode())
    salt = zlib.crc32(name.encode())
    sink = EngineSink(cluster, salt=salt)
    options = RunOptions(model=cluster.config.model, seed=seed, token_salt=salt,
                         server_block_size=prof.block_size)
    runner = Runner(spec, sink, options)
    peaks: dict[str, float] = {}
    timeline: list[dict[str, float]] = []
    sampler = asyncio.ensure_future(_sample(cluster, runner, peaks, timeline, sample_every_s))
    try:
        await runner.run()
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        await cluster.stop()
    after = parse_metrics(metrics.render().decode())
    target = {"launcher": "sim-virtual", "url": None, "profile": prof.name,
              "model": cluster.config.model, "settings": prof.describe(),
              "fast_path_requests": sink.fast_requests}
    result = build_result(name=name, target=target, spec=spec, seed=seed,
                          started_at=started_at, wall_s=time.perf_counter() - wall0,
                          records=runner.records, before=before, after=after, peaks=peaks,
                          timeline=timeline, slo_spec=slo_spec,
                          server_block_size=prof.block_size,
                          designed_variants=runner.designed_variants)
    if results_dir is not None:
        write_json(result, Path(results_dir))
    return result


async def _sample(cluster: Cluster, runner: Runner, peaks: dict[str, float],
                  timeline: list[dict[str, float]], every_s: float) -> None:
    """Gauge peaks and a timeline, read from the engines (no metrics rendering)."""
    engines = cluster.engines
    while True:
        await asyncio.sleep(every_s)
        running = float(sum(e.num_running for e in engines))
        waiting = float(sum(e.num_waiting for e in engines))
        usage = max(e.kv_cache_usage for e in engines)
        for key, v in (("vllm:num_requests_running", running),
                       ("vllm:num_requests_waiting", waiting),
                       ("vllm:kv_cache_usage_perc", usage)):
            peaks[key] = max(peaks.get(key, 0.0), v)
        timeline.append({"t": runner.now(), "in_flight": float(runner.in_flight),
                         "num_requests_running": running, "num_requests_waiting": waiting,
                         "kv_cache_usage_perc": usage,
                         "prefix_cache_hits": float(sum(e.stats.prefix_cache_hits
                                                        for e in engines)),
                         "prefix_cache_queries": float(sum(e.stats.prefix_cache_queries
                                                           for e in engines))})
