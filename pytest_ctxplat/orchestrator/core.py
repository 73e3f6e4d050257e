"""One way to play a workload: prepare the target, snapshot its metrics, run the
sessions through its sink while sampling gauges, snapshot again, build and write the
result (also when the run is interrupted)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from ..driver.budget import RequestBudget
from ..driver.runner import RequestSink, Runner, RunOptions
from ..interrupts import signalled
from ..report.records import RequestRecord
from ..report.result import RunResult, write_json
from ..servers.scrape import MetricsSnapshot
from ..slo import SLOSpec
from ..workload.spec import WorkloadSpec
from .parts import Part, part_payload, part_spec, wait_for_start
from .progress import Progress, ProgressTracker
from .results import build_result

__all__ = ["GAUGES", "PlayOptions", "Preparation", "Target", "play"]

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


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlayOptions:
    """How :func:`play` plays and records a run (everything but workload and target).

    ``token_salt`` (default: a hash of ``name``) changes every token without changing
    the workload's structure, so an earlier run's cache cannot serve this one.
    ``results_dir``: where the result JSON goes (written at the end, also when the run
    is interrupted, and every ``checkpoint_every_s`` wall seconds while it runs).
    ``max_connect_failures``: consecutive connection failures that trip the circuit
    breaker (timeouts and retries belong to the target's client). ``death_grace_s``:
    after the circuit breaker stopped the run, how long to wait for a dying server to be
    seen dead before describing it. ``on_progress``: called with the run's
    :class:`~pytest_ctxplat.orchestrator.progress.Progress` at each gauge sample, at
    most every ``progress_every_s`` wall seconds (a display; it must return quickly).
    ``earlier_runs``: records of earlier runs of the
    same workload judged together with this one (``repeat``, reruns); ``policy``
    overrides the SLO's ``on_inconclusive`` (see :func:`~.repeat.play_judged`).
    ``part``: play one part of a split run (:mod:`~.parts`), starting at its
    ``start_at``; ``ready``, when given, is called once the target is prepared and
    returns the agreed start instead (a start barrier between processes). ``budget``:
    the requests this part may start come from a pool shared with the other worker
    processes of the run (``workers=N``), not from its fixed share of ``max_requests``.
    """

    slo: SLOSpec | None = None
    seed: int = 0
    name: str = "run"
    token_salt: int | None = None
    results_dir: Path | None = None
    sample_every_s: float = 1.0
    checkpoint_every_s: float = 10.0
    extra_body: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    max_connect_failures: int = 10
    death_grace_s: float = 5.0
    on_progress: Callable[[Progress], None] | None = None
    progress_every_s: float = 0.5
    earlier_runs: tuple[tuple[RequestRecord, ...], ...] = ()
    policy: str | None = None
    part: Part | None = None
    ready: Callable[[], float | None] | None = None
    budget: RequestBudget | None = None


async def play(spec: WorkloadSpec, target: Target, options: PlayOptions | None = None
               ) -> RunResult:
    """Play ``spec`` against ``target`` and return the judged result (see
    :class:`PlayOptions`). A run that ends before its bound (interrupted, the server
    died, the circuit breaker) is judged ``incomplete``."""
    opts = options or PlayOptions()
    salt = zlib.crc32(opts.name.encode()) if opts.token_salt is None else opts.token_salt
    if opts.part is not None:
        salt = opts.part.salt(salt)
    async with target:
        prep = await target.prepare(spec, seed=opts.seed, token_salt=salt)
        run = _Run(prep, target, opts, await target.snapshot(), salt)
        if opts.part is not None:
            await run.start_part(opts.part)
        sampler = asyncio.ensure_future(run.sample())
        interrupted: str | None = None
        try:
            await run.runner.run()
        except BaseException as exc:  # a signal, pytest-timeout, cancellation: keep it
            interrupted = f"interrupted ({type(exc).__name__})"
            raise
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
            if interrupted is None and signalled() is not None:
                # the session is being stopped: its teardown may have stopped the server
                # before the loop saw the signal; the run was interrupted all the same
                interrupted = f"interrupted ({signalled()})"
            if run.runner.stop_reason and not interrupted:
                await _settle(target, opts.death_grace_s)
            after = None if interrupted else await target.snapshot(final=True)
            result = run.result(after, interrupted)
            run.write(result)
    return result


async def _settle(target: Target, grace_s: float) -> None:
    """After the circuit breaker stopped a run: give a dying server ``grace_s`` to be
    seen dead (a supervisor stops the server's process group before it exits itself),
    so the result blames the server, not the breaker."""
    end = time.monotonic() + grace_s
    while target.alive() and time.monotonic() < end:
        await asyncio.sleep(0.1)


class _Run:
    """The state of one :func:`play`: runner, gauge samples, and the result's parts."""

    def __init__(self, prep: Preparation, target: Target, opts: PlayOptions,
                 before: MetricsSnapshot | None, salt: int) -> None:
        self.prep, self.target, self.opts, self.before = prep, target, opts, before
        self.started_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.wall0 = time.perf_counter()
        self.whole = prep.spec  # a part plays its share of it
        self.part = opts.part
        if opts.part is not None:
            prep = dataclasses.replace(prep, spec=part_spec(prep.spec, opts.part))
            self.prep = prep
        self.started_wall = time.time()
        self.block_size = (prep.server_block_size or (before.block_size() if before else None)
                           or 1)
        self.runner = Runner(prep.spec, target.sink, RunOptions(
            model=prep.model, seed=opts.seed, token_salt=salt, time_scale=prep.time_scale,
            server_block_size=self.block_size, extra_body=dict(opts.extra_body),
            chat_overhead_tokens=prep.chat_overhead_tokens,
            max_connect_failures=opts.max_connect_failures, slo=opts.slo,
            part=(0, 1) if opts.part is None else (opts.part.index, opts.part.count),
            budget=opts.budget))
        self.peaks: dict[str, float] = {}
        self.timeline: list[dict[str, float]] = []
        self.progress = ProgressTracker(duration_s=prep.spec.bound_s,
                                        max_requests=prep.spec.max_requests)
        self.next_progress = 0.0
        self.progress_failed: str | None = None

    def result(self, after: MetricsSnapshot | None, interrupted: str | None) -> RunResult:
        runner = self.runner
        notes = {**self.prep.notes, **self.prep.spec.run_notes()}
        if runner.throttled:
            notes["load.throttled"] = (f"{runner.throttled} token-budget backoffs "
                                       "(input_tpm / output_tpm)")
        if runner.stop_reason:
            notes["run.stopped"] = runner.stop_reason
        if self.progress_failed:
            notes["run.progress"] = f"progress display stopped: {self.progress_failed}"
        result = build_result(
            name=self.opts.name, target=self.target.describe(), spec=self.prep.spec,
            seed=self.opts.seed, started_at=self.started_at,
            wall_s=time.perf_counter() - self.wall0, records=list(runner.records),
            before=self.before, after=after, peaks=self.peaks, timeline=self.timeline,
            slo_spec=self.opts.slo, notes=notes, interrupted=interrupted is not None,
            incomplete=interrupted or runner.stop_reason, server_block_size=self.block_size,
            designed_variants=runner.designed_variants,
            earlier_runs=self.opts.earlier_runs, policy=self.opts.policy,
            capacity=runner.capacity.report() if runner.capacity is not None else None,
            judged_records=runner.capacity.sustained_records()
            if runner.capacity is not None else None)
        fields = self.part_fields(after, notes)
        return dataclasses.replace(result, **fields) if fields else result

    async def start_part(self, part: Part) -> None:
        """Wait for the agreed start of this part (asking ``ready`` for it first)."""
        if self.opts.ready is not None:
            part = dataclasses.replace(part, start_at=self.opts.ready())
            self.part = part
        await wait_for_start(part.start_at)
        self.wall0 = time.perf_counter()
        self.started_wall = time.time()

    def part_fields(self, after: MetricsSnapshot | None, notes: Mapping[str, str]
                    ) -> dict[str, Any]:
        """A part's result: its name carries the shard; ``parts`` what merging needs."""
        part = self.part
        if part is None:
            return {}
        runner = self.runner
        # a part is judged only merged with the others (ctxplat merge, or its workers')
        payload = part_payload(
            part=part, name=self.opts.name, spec=self.whole, started_wall=self.started_wall,
            time_scale=self.prep.time_scale, records=runner.records,
            designed_variants=runner.designed_variants, before=self.before, after=after,
            peaks=self.peaks, notes=notes)
        return {"name": part.result_name(self.opts.name), "verdict": None, "parts": payload}

    def write(self, result: RunResult) -> None:
        if self.opts.results_dir is not None:
            write_json(result, Path(self.opts.results_dir))

    async def sample(self) -> None:
        """Every ``sample_every_s`` (loop time): stop the run if the server died; record
        gauge peaks and a timeline point; now and then write a checkpoint result."""
        runner, target = self.runner, self.target
        next_checkpoint = time.monotonic() + self.opts.checkpoint_every_s
        while True:
            await asyncio.sleep(self.opts.sample_every_s)
            if not target.alive():
                runner.stop("the server under test died during the run")
            values = await target.gauges()
            point = {"t": runner.now(), "in_flight": float(runner.in_flight),
                     "requests_done": float(runner.completed)}
            for key in (*GAUGES, *TIMELINE_COUNTERS):
                if key in values:
                    v = values[key]
                    if key in GAUGES:
                        self.peaks[key] = max(self.peaks.get(key, 0.0), v)
                    point[key.split(":", 1)[1].removesuffix("_total")] = v
            self.timeline.append(point)
            self.report_progress()
            if time.monotonic() >= next_checkpoint and self.opts.results_dir is not None:
                # what finished so far survives even a SIGKILL (in_flight: not judged)
                self.write(self.result(None, "in progress (a checkpoint of a running run)"))
                next_checkpoint = time.monotonic() + self.opts.checkpoint_every_s

    def report_progress(self) -> None:
        """Call ``on_progress`` (throttled on the wall clock: cheap in virtual time)."""
        callback = self.opts.on_progress
        if callback is None or self.progress_failed or time.monotonic() < self.next_progress:
            return
        self.next_progress = time.monotonic() + self.opts.progress_every_s
        try:
            callback(self.progress.snapshot(self.runner.records, self.runner.now()))
        except Exception as exc:  # a display never stops the sampling or the run
            self.progress_failed = f"{type(exc).__name__}: {exc}"
