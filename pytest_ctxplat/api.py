"""Library entry points: play a workload against a server, or against a simulated
deployment in virtual time, and judge it, without pytest.

>>> from pytest_ctxplat import run_workload, simulate
>>> result = run_workload("http://127.0.0.1:8000", "chat", overrides={"users": 8},
...                       slo={"ttft_p95_ms": 2000})          # doctest: +SKIP
>>> result.hit_rates.request, result.verdict.passed          # doctest: +SKIP
>>> simulate("coding_swarm", "h100-llama8b-dram").hit_rates   # doctest: +SKIP

Both are thin entry points over one orchestrator
(:func:`pytest_ctxplat.orchestrator.play`); the plugin's ``ctxplat_run`` fixture uses it
too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, ParamSpec, TypeVar

from .driver.limits import DEFAULT_LIMITS, ClientLimits
from .errors import ConfigError, CtxplatError, SLOViolation
from .orchestrator import (
    HttpTarget,
    InProcessTarget,
    PlayOptions,
    Progress,
    format_breach,
    play_judged,
)
from .orchestrator.knees import (
    KneeSpec,
    knee_result,
    knee_spec,
    plan_knees,
    profile_capacities,
    run_knees,
)
from .orchestrator.parts import Part, split_refusal
from .orchestrator.sweep import plan_sweep, run_sweep, sweep_result, sweep_spec
from .orchestrator.workers import check_workers, play_workers
from .report.result import RunResult, write_json
from .servers.attach import AttachedServer
from .servers.base import ServerHandle
from .sim.hardware import HardwareProfile, load_hardware
from .sim.virtual import run_virtual
from .slo import SLOSpec, parse_slo
from .workload.loader import resolve_workload
from .workload.spec import WorkloadSpec

__all__ = ["afind_knees", "arun_workload", "asimulate", "asweep", "find_knees", "run_sync",
           "run_workload", "simulate", "sweep", "write_html_report"]

T = TypeVar("T")
P = ParamSpec("P")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code, also when called inside a running
    event loop (an ``async def`` test): then it runs in a worker thread's own loop.
    The loop is uvloop's where installed (the ``fast`` extra), with a full-resolution
    clock (see :func:`~pytest_ctxplat.driver.multiproc.new_event_loop`); automatic
    garbage collection is paused meanwhile (:func:`~pytest_ctxplat.driver.multiproc.tuned_gc`)."""
    try:
        asyncio.get_running_loop()
        in_loop = True
    except RuntimeError:
        in_loop = False
    if not in_loop:  # (outside the except block: errors are not chained to this one)
        return run_fast(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = run_fast(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="ctxplat-run", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def run_fast(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a new fast event loop in this thread (see :func:`run_sync`).

    A SIGALRM handler's exception (pytest-timeout's signal method) stops the run like
    Ctrl-C does, so the run's result is written, and is then raised: uvloop would
    otherwise drop it, and the timeout would never fire."""
    from .driver.multiproc import new_event_loop, tuned_gc

    with tuned_gc(), _alarm_propagates() as raised:
        try:
            if sys.version_info >= (3, 11):
                with asyncio.Runner(loop_factory=new_event_loop) as runner:
                    return runner.run(coro)
            return asyncio.run(coro)  # pragma: no cover - Python 3.10: asyncio's own loop
        except KeyboardInterrupt:
            if raised:
                raise raised[0] from None
            raise


@contextlib.contextmanager
def _alarm_propagates() -> Iterator[list[BaseException]]:
    """While the loop runs, a Python SIGALRM handler that raises interrupts it with
    KeyboardInterrupt (which every loop propagates); the handler's exception is kept in
    the yielded list for the caller to raise instead."""
    raised: list[BaseException] = []
    original = signal.getsignal(signal.SIGALRM) if hasattr(signal, "SIGALRM") else None
    if not callable(original) or threading.current_thread() is not threading.main_thread():
        yield raised
        return

    def relay(signum: int, frame: FrameType | None) -> None:
        try:
            original(signum, frame)
        except BaseException as exc:
            raised.append(exc)
            raise KeyboardInterrupt from None

    signal.signal(signal.SIGALRM, relay)
    try:
        yield raised
    finally:
        if signal.getsignal(signal.SIGALRM) is relay:
            signal.signal(signal.SIGALRM, original)


def _slo(slo: SLOSpec | Mapping[str, Any] | None, name: str) -> SLOSpec | None:
    return slo if isinstance(slo, SLOSpec) or slo is None else parse_slo(slo, name)


def _judged(result: RunResult, check: bool) -> RunResult:
    if check and result.verdict is not None and not result.verdict.passed:
        raise SLOViolation(format_breach(result), result.verdict)
    return result


async def arun_workload(
    server: str | ServerHandle,
    workload: str | WorkloadSpec,
    *,
    overrides: Mapping[str, Any] | None = None,
    slo: SLOSpec | Mapping[str, Any] | None = None,
    seed: int = 0,
    token_salt: int | None = None,
    model: str | None = None,
    name: str = "run",
    results_dir: str | Path | None = None,
    reset_cache: bool = True,
    check: bool = False,
    scrape_every_s: float = 1.0,
    extra_body: Mapping[str, Any] | None = None,
    time_scale: float | None = None,
    workload_dirs: list[Path] | None = None,
    limits: ClientLimits | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    workers: int = 1,
    part: Part | None = None,
) -> RunResult:
    """Play ``workload`` against ``server`` (a URL or a started server's handle),
    measure, judge against ``slo``.

    ``workload`` is a kind, a definition name (looked up in ``workload_dirs``, then the
    built-ins) or a YAML path, or a spec object; ``overrides`` set its fields. The result
    is written to ``results_dir`` (when given) before it is judged, and also when the run
    is interrupted, so measurements are never lost. With ``check=True`` a breached SLO
    raises :class:`~pytest_ctxplat.errors.SLOViolation`. Against the simulator, times are
    reported in model time (``time_scale`` defaults to the simulator's ``speedup``).
    ``limits`` are the client's timeouts, throttling retries and circuit breaker
    (:class:`~pytest_ctxplat.driver.limits.ClientLimits`). A server that the capability
    probe finds unreachable, or without a usable endpoint, raises
    :class:`~pytest_ctxplat.errors.ServerError` before anything is played.
    ``on_progress`` is called with the run's
    :class:`~pytest_ctxplat.orchestrator.progress.Progress` about every second.
    ``workers`` > 1 splits the users across that many processes and merges their
    results into one (:mod:`~pytest_ctxplat.orchestrator.workers`); ``part`` plays one
    shard of a run split across hosts, judged later by ``ctxplat merge``
    (:mod:`~pytest_ctxplat.orchestrator.parts`). A workload that cannot be split raises
    :class:`~pytest_ctxplat.errors.ConfigError` saying why.
    """
    handle: ServerHandle = AttachedServer(server) if isinstance(server, str) else server
    spec = resolve_workload(workload, overrides, dirs=workload_dirs or (), where=name)
    lim = limits or DEFAULT_LIMITS
    options = PlayOptions(
        slo=_slo(slo, name), seed=seed, name=name, token_salt=token_salt,
        results_dir=None if results_dir is None else Path(results_dir),
        sample_every_s=scrape_every_s, extra_body=dict(extra_body or {}),
        max_connect_failures=lim.max_connect_failures, on_progress=on_progress, part=part)
    check_workers(spec, options, workers)
    if part is not None and part.count > 1:
        refusal = split_refusal(spec, options.slo, part.count)
        if refusal:
            raise ConfigError(f"{name}: cannot play {part.label}: {refusal}")
        reset_cache = reset_cache and part.index == 0  # one shard resets, before the start
    if workers > 1:
        result = await play_workers(spec, handle, options, workers, model=model,
                                    reset_cache=reset_cache, time_scale=time_scale, limits=lim)
        return _judged(result, check)

    def target() -> HttpTarget:
        return HttpTarget(handle, model=model, reset_cache=reset_cache,
                          time_scale=time_scale, limits=lim)

    result = await play_judged(spec, target, options)
    return _judged(result, check)


async def asimulate(
    workload: str | WorkloadSpec,
    profile: str | HardwareProfile,
    *,
    overrides: Mapping[str, Any] | None = None,
    profile_overrides: Mapping[str, Any] | None = None,
    slo: SLOSpec | Mapping[str, Any] | None = None,
    seed: int = 0,
    name: str = "simulate",
    results_dir: str | Path | None = None,
    check: bool = False,
    sample_every_s: float = 5.0,
    workload_dirs: list[Path] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> RunResult:
    """Play ``workload`` against the simulated deployment ``profile`` (a built-in
    hardware profile name, a profile YAML file or a profile object, with dotted
    ``profile_overrides``) in this process, on the running loop's clock: virtual time
    on a :class:`~pytest_ctxplat.sim.virtual.VirtualEventLoop` (:func:`simulate`).
    ``on_progress`` is called with the run's
    :class:`~pytest_ctxplat.orchestrator.progress.Progress` at most every half second of
    wall time."""
    spec = resolve_workload(workload, overrides, dirs=workload_dirs or (), where=name)
    prof = profile if isinstance(profile, HardwareProfile) else load_hardware(
        profile, profile_overrides)
    result = await play_judged(spec, lambda: InProcessTarget(prof), PlayOptions(
        slo=_slo(slo, name), seed=seed, name=name,
        results_dir=None if results_dir is None else Path(results_dir),
        sample_every_s=sample_every_s, on_progress=on_progress))
    return _judged(result, check)


def _sync(fn: Callable[P, Coroutine[Any, Any, T]], runner: Callable[[Coroutine[Any, Any, T]], T],
          doc: str) -> Callable[P, T]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return runner(fn(*args, **kwargs))

    wrapper.__doc__ = doc
    return wrapper


run_workload = _sync(arun_workload, run_sync,
                     "Synchronous :func:`arun_workload` (same parameters).")
simulate = _sync(asimulate, run_virtual,
                 "Play ``workload`` against ``profile`` in virtual time: :func:`asimulate` "
                 "on a fresh virtual-time loop (same parameters).")


async def asweep(
    workload: str | WorkloadSpec,
    *,
    users: Sequence[int] = (),
    rates: Sequence[float] = (),
    server: str | ServerHandle | None = None,
    profile: str | HardwareProfile | None = None,
    overrides: Mapping[str, Any] | None = None,
    slo: SLOSpec | Mapping[str, Any] | None = None,
    name: str = "sweep",
    results_dir: str | Path | None = None,
    check: bool = False,
    workload_dirs: list[Path] | None = None,
    **options: Any,
) -> RunResult:
    """Play ``workload`` once per point, ``users`` (closed-loop users) or ``rates``
    (open-loop session arrivals per second), against ``server`` (as
    :func:`arun_workload`) or the simulated ``profile`` (as :func:`asimulate`), with the
    same seed, and combine the points (:mod:`~pytest_ctxplat.orchestrator.sweep`): the
    result carries ``sweep`` (the curve: tokens/s, TTFT p95, decode speed, hit rates and
    verdict per point) and ``capacity`` (the largest passing point, which
    ``min_sustained_users`` gates on). ``options`` go to each point's run (``seed``,
    ``profile_overrides``, ``model``, ...). Only the combined result is written to
    ``results_dir``."""
    if (server is None) == (profile is None):
        raise ConfigError(f"{name}: a sweep needs a server or a simulator profile (one)")
    points = sweep_spec({"users": list(users), "rates": list(rates)}, name)
    spec = resolve_workload(workload, overrides, dirs=workload_dirs or (), where=name)
    target_slo = _slo(slo, name)

    async def play_point(point: WorkloadSpec, point_slo: SLOSpec | None,
                         point_name: str) -> RunResult:
        if server is not None:
            return await arun_workload(server, point, slo=point_slo, name=point_name,
                                       **options)
        assert profile is not None
        return await asimulate(point, profile, slo=point_slo, name=point_name, **options)

    result = await run_sweep(spec, points, target_slo, name, play_point)
    if results_dir is not None:
        write_json(result, Path(results_dir))
    return _judged(result, check)


def sweep(workload: str | WorkloadSpec, **kwargs: Any) -> RunResult:
    """Synchronous :func:`asweep` (same parameters): against a simulator ``profile``
    each point runs in virtual time on a fresh loop (exactly as :func:`simulate` would
    run it alone); against a ``server`` in real time."""
    if kwargs.get("profile") is None:
        return run_sync(asweep(workload, **kwargs))
    return _sweep_virtual(workload, **kwargs)


def _sweep_virtual(workload: str | WorkloadSpec, *, profile: str | HardwareProfile,
                   users: Sequence[int] = (), rates: Sequence[float] = (),
                   overrides: Mapping[str, Any] | None = None,
                   slo: SLOSpec | Mapping[str, Any] | None = None, name: str = "sweep",
                   results_dir: str | Path | None = None, check: bool = False,
                   workload_dirs: list[Path] | None = None, **options: Any) -> RunResult:
    points = sweep_spec({"users": list(users), "rates": list(rates)}, name)
    spec = resolve_workload(workload, overrides, dirs=workload_dirs or (), where=name)
    target_slo = _slo(slo, name)
    results = [simulate(point, profile, slo=point_slo, name=point_name, **options)
               for point, point_slo, point_name in plan_sweep(spec, points, target_slo, name)]
    result = sweep_result(name, points, results, target_slo)
    if results_dir is not None:
        write_json(result, Path(results_dir))
    return _judged(result, check)


def _knee_plan(workload: str | WorkloadSpec, profile: str | HardwareProfile | None,
               knees: Mapping[str, Any], overrides: Mapping[str, Any] | None,
               options: Mapping[str, Any], name: str, workload_dirs: list[Path] | None
               ) -> tuple[WorkloadSpec, KneeSpec, HardwareProfile | None]:
    """The workload, the knee search and (for the simulator) the resolved profile; the
    capacities default to the profile's tiers."""
    spec = resolve_workload(workload, overrides, dirs=workload_dirs or (), where=name)
    prof = None
    if profile is not None:
        prof = profile if isinstance(profile, HardwareProfile) else load_hardware(
            profile, options.get("profile_overrides"))
        if knees.get("capacities") is None:
            knees = {**knees, "capacities": profile_capacities(prof)}
    return spec, knee_spec(knees, name), prof


async def _server_capacities(server: str | ServerHandle, name: str) -> dict[str, int]:
    """HBM's capacity from the server's ``vllm:cache_config_info``."""
    import httpx

    from .servers.scrape import scrape

    handle = AttachedServer(server) if isinstance(server, str) else server
    async with httpx.AsyncClient(headers=handle.headers()) as client:
        snap = await scrape(client, handle.url)
    tokens = None if snap is None else snap.gpu_capacity_tokens()
    if tokens is None:
        raise ConfigError(f"{name}: the server reports no vllm:cache_config_info "
                          "num_gpu_blocks; give capacities={'hbm': TOKENS} or working_sets")
    return {"hbm": tokens}


async def afind_knees(
    workload: str | WorkloadSpec = "tier_spill",
    *,
    server: str | ServerHandle | None = None,
    profile: str | HardwareProfile | None = None,
    working_sets: Sequence[int] = (),
    capacities: Mapping[str, int] | None = None,
    overrides: Mapping[str, Any] | None = None,
    slo: SLOSpec | Mapping[str, Any] | None = None,
    name: str = "knees",
    results_dir: str | Path | None = None,
    check: bool = False,
    workload_dirs: list[Path] | None = None,
    knee_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> RunResult:
    """Find where each KV tier runs out (:mod:`~pytest_ctxplat.orchestrator.knees`):
    play ``workload`` (a ``tier_spill`` one) once per working set, against ``server``
    (as :func:`arun_workload`) or the simulated ``profile`` (as :func:`asimulate`).
    The working sets are ``working_sets``, or sized from ``capacities`` (tier name ->
    tokens; default: the profile's tiers, or HBM from the server's
    ``vllm:cache_config_info``). ``knee_options`` set ``multiples``, ``drop_share`` and
    ``ttft_rise``. The result carries ``knees`` (the points and the knee per tier) and
    the observed ``knee_tokens.TIER`` that ``knee_min_tokens`` gates on; only it is
    written to ``results_dir``."""
    if (server is None) == (profile is None):
        raise ConfigError(f"{name}: a knee search needs a server or a simulator profile "
                          "(one)")
    knees: dict[str, Any] = {**(knee_options or {}), "working_sets": list(working_sets)}
    if capacities is not None:
        knees["capacities"] = dict(capacities)
    elif server is not None and not working_sets:
        knees["capacities"] = await _server_capacities(server, name)
    spec, ks, prof = _knee_plan(workload, profile, knees, overrides, options, name,
                                workload_dirs)
    options = {k: v for k, v in options.items() if k != "profile_overrides"}

    async def play_point(point: WorkloadSpec, point_name: str) -> RunResult:
        if server is not None:
            return await arun_workload(server, point, name=point_name, **options)
        assert prof is not None
        return await asimulate(point, prof, name=point_name, **options)

    result = await run_knees(spec, ks, _slo(slo, name), name, play_point)
    if results_dir is not None:
        write_json(result, Path(results_dir))
    return _judged(result, check)


def find_knees(workload: str | WorkloadSpec = "tier_spill", **kwargs: Any) -> RunResult:
    """Synchronous :func:`afind_knees` (same parameters): against a simulator
    ``profile`` each point runs in virtual time on a fresh loop."""
    if kwargs.get("profile") is None:
        return run_sync(afind_knees(workload, **kwargs))
    return _knees_virtual(workload, **kwargs)


def _knees_virtual(workload: str | WorkloadSpec, *, profile: str | HardwareProfile,
                   working_sets: Sequence[int] = (),
                   capacities: Mapping[str, int] | None = None,
                   overrides: Mapping[str, Any] | None = None,
                   slo: SLOSpec | Mapping[str, Any] | None = None, name: str = "knees",
                   results_dir: str | Path | None = None, check: bool = False,
                   workload_dirs: list[Path] | None = None,
                   knee_options: Mapping[str, Any] | None = None, **options: Any
                   ) -> RunResult:
    knees: dict[str, Any] = {**(knee_options or {}), "working_sets": list(working_sets)}
    if capacities is not None:
        knees["capacities"] = dict(capacities)
    spec, ks, prof = _knee_plan(workload, profile, knees, overrides, options, name,
                                workload_dirs)
    options = {k: v for k, v in options.items() if k != "profile_overrides"}
    assert prof is not None
    plan = plan_knees(spec, ks, name)
    results = [simulate(point, prof, name=point_name, **options)
               for _, point, point_name in plan]
    result = knee_result(name, ks, [ws for ws, _, _ in plan], results, _slo(slo, name))
    if results_dir is not None:
        write_json(result, Path(results_dir))
    return _judged(result, check)


def write_html_report(results_dir: str | Path, output: str | Path | None = None, *,
                      analyses: Sequence[str | Path] = (), title: str | None = None,
                      infer: bool = True) -> Path:
    """Write one self-contained HTML report of ``results_dir`` (its run results and
    analysis JSON files, plus ``analyses``) to ``output`` (default:
    ``results_dir/report.html``). With ``infer``, each run also gets the TTL curves of
    its workload as designed, planned offline. Without matplotlib (the ``plots`` extra)
    the report is written without plots and says why at the top
    (:func:`~pytest_ctxplat.report.html.plots_note`); a path the report cannot be
    written to is a ConfigError, raised before any work."""
    from .analysis.sources import designed_analysis
    from .report.html import check_output, load_results, read_analyses, write_report

    rd = Path(results_dir)
    if not rd.is_dir():
        raise ConfigError(f"{rd}: results directory not found")
    out = check_output(rd / "report.html" if output is None else output)
    runs, found = load_results(rd)
    extra = read_analyses(analyses)
    if not runs and not found and not extra:
        raise ConfigError(f"{rd}: no result or analysis JSON files to report")
    designed: list[dict[str, Any] | str | None] = []
    for run in runs if infer else ():
        try:
            designed.append(designed_analysis(run))
        except (CtxplatError, ValueError, TypeError, KeyError, NotImplementedError) as exc:
            designed.append(str(exc))
    return write_report(out, runs, [*found, *extra],
                        title=title or f"ctxplat report: {rd.name}", designed=designed)
