"""One way to play a workload: prepare the target, snapshot its metrics, run the
sessions through its sink while sampling gauges, snapshot again, build and write the
result (also when the run is interrupted)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from ..driver.runner import RequestSink, Runner, RunOptions
from ..report.result import RunResult, write_json
from ..servers.scrape import MetricsSnapshot
from ..slo import SLOSpec
from ..workload.spec import WorkloadSpec
from .results import build_result

__all__ = ["GAUGES", "Preparation", "Target", "play"]

# Gauges whose peak a run reports; with the cumulative prefix-cache counters they make
# the timeline's points (named without the ``vllm:`` prefix and ``_total`` suffix).
GAUGES = ("vllm:kv_cache_usage_perc", "vllm:num_requests_running",
          "vllm:num_requests_waiting")
TIMELINE_COUNTERS = ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preparation:
    """What a target found out before the run, and how requests must be built for it.

    ``spec`` may differ from the workload asked for (a server refusing token-id prompts
    gets chat requests). ``server_block_size`` is the server's KV block size (None: read
    it from the metrics snapshot). ``time_scale`` is model seconds per loop second.
    """

    spec: WorkloadSpec
    model: str
    server_block_size: int | None = None
    time_scale: float = 1.0
    chat_overhead_tokens: int = 0
    notes: Mapping[str, str] = dataclasses.field(default_factory=dict)


class Target(Protocol):
    """What a workload is played against (see the package docstring).

    Used as an async context manager around one run. ``sink`` is valid after
    :meth:`prepare`; :meth:`describe` is called after the run and returns the
    ``target`` mapping of the result (``launcher``, ``url``, ``profile``, ``model``,
    ``settings``, ``capabilities``, ``alive_after_run``, ``log_tail``, ``diagnostics``).
    """

    @property
    def sink(self) -> RequestSink: ...

    async def __aenter__(self) -> Target: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def prepare(self, spec: WorkloadSpec, *, seed: int, token_salt: int) -> Preparation:
        """Probe and reset the server; choose how to build requests."""
        ...

    async def snapshot(self, *, final: bool = False) -> MetricsSnapshot | None:
        """The server's counters now (None: it exposes none)."""
        ...

    async def gauges(self) -> Mapping[str, float]:
        """Current values of :data:`GAUGES` and :data:`TIMELINE_COUNTERS` (what is
        available)."""
        ...

    def alive(self) -> bool: ...

    def describe(self) -> dict[str, Any]: ...


async def play(spec: WorkloadSpec, target: Target, *, slo: SLOSpec | None = None,
               seed: int = 0, name: str = "run", token_salt: int | None = None,
               results_dir: str | Path | None = None, sample_every_s: float = 1.0,
               extra_body: Mapping[str, Any] | None = None) -> RunResult:
    """Play ``spec`` against ``target`` and return the judged result.

    ``token_salt`` (default: a hash of ``name``) changes every token without changing
    the workload's structure, so an earlier run's cache cannot serve this one. The
    result is written to ``results_dir`` when given, also when the run is interrupted.
    """
    started_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    wall0 = time.perf_counter()
    salt = zlib.crc32(name.encode()) if token_salt is None else token_salt
    async with target:
        prep = await target.prepare(spec, seed=seed, token_salt=salt)
        before = await target.snapshot()
        block_size = prep.server_block_size or (before.block_size() if before else None) or 1
        options = RunOptions(model=prep.model, seed=seed, token_salt=salt,
                             time_scale=prep.time_scale, server_block_size=block_size,
                             extra_body=dict(extra_body or {}),
                             chat_overhead_tokens=prep.chat_overhead_tokens)
        runner = Runner(prep.spec, target.sink, options)
        peaks: dict[str, float] = {}
        timeline: list[dict[str, float]] = []
        sampler = asyncio.ensure_future(_sample(target, runner, peaks, timeline,
                                                sample_every_s))
        interrupted = False
        try:
            await runner.run()
        except (asyncio.CancelledError, KeyboardInterrupt):
            interrupted = True
            raise
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
            after = None if interrupted else await target.snapshot(final=True)
            notes = dict(prep.notes)
            if runner.throttled:
                notes["load.throttled"] = (f"{runner.throttled} token-budget backoffs "
                                           "(input_tpm / output_tpm)")
            result = build_result(
                name=name, target=target.describe(), spec=prep.spec, seed=seed,
                started_at=started_at, wall_s=time.perf_counter() - wall0,
                records=runner.records, before=before, after=after, peaks=peaks,
                timeline=timeline, slo_spec=slo, notes=notes, interrupted=interrupted,
                server_block_size=block_size,
                designed_variants=runner.designed_variants)
            if results_dir is not None:
                write_json(result, Path(results_dir))
    return result


async def _sample(target: Target, runner: Runner, peaks: dict[str, float],
                  timeline: list[dict[str, float]], every_s: float) -> None:
    """Every ``every_s`` (loop time): stop the run if the server died; record gauge
    peaks and a timeline point."""
    while True:
        await asyncio.sleep(every_s)
        if not target.alive():
            runner.stop()  # the server died: stop sending, keep what was measured
        values = await target.gauges()
        point = {"t": runner.now(), "in_flight": float(runner.in_flight),
                 "requests_done": float(runner.completed)}
        for key in (*GAUGES, *TIMELINE_COUNTERS):
            if key in values:
                v = values[key]
                if key in GAUGES:
                    peaks[key] = max(peaks.get(key, 0.0), v)
                point[key.split(":", 1)[1].removesuffix("_total")] = v
        timeline.append(point)
