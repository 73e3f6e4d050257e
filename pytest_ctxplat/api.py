"""Library entry points: play a workload against a server and judge it, without pytest.

>>> from pytest_ctxplat import run_workload
>>> result = run_workload("http://127.0.0.1:8000", "chat", overrides={"users": 8},
...                       slo={"ttft_p95_ms": 2000})          # doctest: +SKIP
>>> result.hit_rates.request, result.verdict.passed          # doctest: +SKIP

The plugin's ``ctxplat_run`` fixture calls the same functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as _dt
import sys
import threading
import time
import zlib
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from .driver.records import RequestRecord
from .driver.runner import Runner, RunOptions
from .driver.scrape import MetricsSnapshot, scrape, server_delta
from .errors import SLOViolation
from .report import stats
from .report.result import HitRates, RunResult, ServerMetrics, write_json
from .servers.attach import AttachedServer
from .servers.base import ServerHandle
from .servers.probe import ensure_capabilities
from .slo import SLOSpec, evaluate, parse_slo
from .workload.spec import WorkloadSpec, coerce_fields, load_workload

__all__ = ["arun_workload", "build_result", "format_breach", "run_sync", "run_workload"]

T = TypeVar("T")
_GAUGES = ("vllm:kv_cache_usage_perc", "vllm:num_requests_running", "vllm:num_requests_waiting")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code, also when called inside a running
    event loop (an ``async def`` test): then it runs in a worker thread's own loop.
    The loop is uvloop's where installed (the ``fast`` extra), with a full-resolution
    clock (see :func:`~pytest_ctxplat.driver.multiproc.new_event_loop`); automatic
    garbage collection is paused meanwhile (:func:`~pytest_ctxplat.driver.multiproc.tuned_gc`)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_fast(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = _run_fast(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="ctxplat-run", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def _run_fast(coro: Coroutine[Any, Any, T]) -> T:
    from .driver.multiproc import new_event_loop, tuned_gc

    with tuned_gc():
        if sys.version_info >= (3, 11):
            with asyncio.Runner(loop_factory=new_event_loop) as runner:
                return runner.run(coro)
        return asyncio.run(coro)  # pragma: no cover - Python 3.10: asyncio's own loop


def run_workload(server: str | ServerHandle, workload: str | WorkloadSpec, **kwargs: Any
                 ) -> RunResult:
    """Synchronous :func:`arun_workload`."""
    return run_sync(arun_workload(server, workload, **kwargs))


async def _probe_model(client: httpx.AsyncClient, url: str) -> str | None:
    try:
        resp = await client.get(url + "/v1/models", timeout=10.0)
        data = resp.json()["data"]
        return str(data[0]["id"]) if data else None
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
        return None


def _block_size(snap: MetricsSnapshot | None) -> int | None:
    if snap is None:
        return None
    for key in snap.with_prefix("vllm:cache_config_info"):
        if "block_size=" in key:
            try:
                return int(key.split("block_size=")[1].split(",")[0].rstrip("}"))
            except ValueError:
                return None
    return None


async def _poll_gauges(client: httpx.AsyncClient, url: str, runner: Runner,
                       peaks: dict[str, float], timeline: list[dict[str, float]],
                       every_s: float, handle: ServerHandle | None = None) -> None:
    while True:
        await asyncio.sleep(every_s)
        if handle is not None and not handle.alive():
            runner.stop()  # the server died: stop sending, keep what was measured
        snap = await scrape(client, url)
        point = {"t": runner.now(), "in_flight": float(runner.in_flight),
                 "requests_done": float(sum(1 for r in runner.records if r.end_s is not None))}
        if snap is not None:
            for g in _GAUGES:
                v = snap.get(g)
                peaks[g] = max(peaks.get(g, 0.0), v)
                point[g.split(":", 1)[1]] = v
            point["prefix_cache_hits"] = snap.get("vllm:prefix_cache_hits_total")
            point["prefix_cache_queries"] = snap.get("vllm:prefix_cache_queries_total")
        timeline.append(point)


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
) -> RunResult:
    """Play ``workload`` against ``server``, measure, judge against ``slo``.

    The result is written to ``results_dir`` (when given) before it is judged, and also
    when the run is interrupted, so measurements are never lost. With ``check=True`` a
    breached SLO raises :class:`~pytest_ctxplat.errors.SLOViolation`. Against the
    simulator, times are reported in model time (``time_scale`` defaults to the
    simulator's ``speedup``).
    """
    from .driver.http import ClientLimits, StreamClient

    handle: ServerHandle = AttachedServer(server) if isinstance(server, str) else server
    spec = workload if isinstance(workload, WorkloadSpec) else load_workload(
        workload, overrides)
    if isinstance(workload, WorkloadSpec) and overrides:
        spec = dataclasses.replace(workload, **coerce_fields(type(workload), overrides, name))
    slo_spec = slo if isinstance(slo, SLOSpec) or slo is None else parse_slo(slo, name)
    url = handle.url
    started_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    wall0 = time.perf_counter()
    peaks: dict[str, float] = {}
    timeline: list[dict[str, float]] = []
    notes: dict[str, str] = {}
    async with httpx.AsyncClient(headers=handle.headers()) as control:
        model = model or handle.info.model or await _probe_model(control, url) or "default"
        caps = await ensure_capabilities(handle, control, model)
        notes.update(caps.run_notes())
        if spec.api == "completions" and caps.token_id_prompts is False and caps.chat:
            spec = dataclasses.replace(spec, api="chat")
            notes["prompts"] = ("probe: the server refused token-id prompts on "
                                "/v1/completions; sent chat text instead, so block boundaries "
                                "depend on its tokenizer")
        if reset_cache:
            with contextlib.suppress(httpx.HTTPError):
                resp = await control.post(url + "/reset_prefix_cache", timeout=30.0)
                if resp.status_code >= 400:
                    notes["reset_prefix_cache"] = f"HTTP {resp.status_code}"
        before = await scrape(control, url)
        server_bs = _block_size(before) or 1
        salt = zlib.crc32(name.encode()) if token_salt is None else token_salt
        if time_scale is None:
            time_scale = float(handle.info.settings.get("speedup", 1.0)) \
                if handle.info.launcher == "sim" else 1.0
        chat_overhead = 0
        if spec.api == "chat":
            from .workload.render import probe_chat_tokenizer

            chat_overhead, chat_notes = await probe_chat_tokenizer(control, url, model)
            notes.update(chat_notes)
        options = RunOptions(model=model, seed=seed, token_salt=salt, time_scale=time_scale,
                             server_block_size=server_bs, extra_body=dict(extra_body or {}),
                             chat_overhead_tokens=chat_overhead)
        limits = ClientLimits(max_connections=0)
        interrupted = False
        async with StreamClient(url, limits=limits, headers=handle.headers()) as client:
            runner = Runner(spec, client, options)
            poller = asyncio.create_task(
                _poll_gauges(control, url, runner, peaks, timeline, scrape_every_s, handle))
            try:
                await runner.run()
            except (asyncio.CancelledError, KeyboardInterrupt):
                interrupted = True
                raise
            finally:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
                after = await _final_scrape(control, url) if not interrupted else None
                target = handle.info.to_dict()
                target["capabilities"] = caps.to_dict()
                target["alive_after_run"] = handle.alive()
                if not handle.alive():
                    target["log_tail"] = handle.log_tail()
                if runner.throttled:
                    notes["load.throttled"] = (f"{runner.throttled} token-budget backoffs "
                                               "(input_tpm / output_tpm)")
                result = build_result(
                    name=name, target=target, spec=spec, seed=seed, started_at=started_at,
                    wall_s=time.perf_counter() - wall0, records=runner.records, before=before,
                    after=after, peaks=peaks, timeline=timeline, slo_spec=slo_spec,
                    notes=notes, interrupted=interrupted, server_block_size=server_bs,
                    designed_variants=runner.designed_variants)
                if results_dir is not None:
                    write_json(result, Path(results_dir))
    if check and result.verdict is not None and not result.verdict.passed:
        raise SLOViolation(format_breach(result), result.verdict)
    return result


async def _final_scrape(control: httpx.AsyncClient, url: str) -> MetricsSnapshot | None:
    try:
        return await asyncio.wait_for(scrape(control, url), 15.0)
    except (asyncio.TimeoutError, httpx.HTTPError):
        return None


def build_result(*, name: str, target: Mapping[str, Any], spec: WorkloadSpec, seed: int,
                 started_at: str, wall_s: float, records: Sequence[RequestRecord],
                 before: MetricsSnapshot | None, after: MetricsSnapshot | None,
                 peaks: Mapping[str, float] | None = None,
                 timeline: Sequence[Mapping[str, float]] = (), slo_spec: SLOSpec | None = None,
                 notes: Mapping[str, str] | None = None, interrupted: bool = False,
                 server_block_size: int = 1,
                 designed_variants: Mapping[str, Sequence[int]] | None = None) -> RunResult:
    """Assemble a :class:`RunResult` from request records and two ``/metrics`` snapshots
    (either may be None when the server has no metrics). Used by HTTP runs and by the
    in-process simulator alike. ``designed_variants`` (``Runner.designed_variants``) adds
    designed hit rates for a TTL or capacity as ``hit_rate.designed_ttl_<s>s`` /
    ``hit_rate.designed_cap_<tokens>`` observed metrics."""
    records = tuple(records)
    summary = stats.summarize(records, wall_s)
    delta = server_delta(before, after, peaks) if before is not None and after is not None \
        else None
    rates, rate_notes = stats.hit_rates(records, delta)
    if designed_variants:
        rates.update(stats.designed_variant_rates(records, designed_variants))
    rate_notes.update(notes or {})
    good = stats.goodput(records, slo_spec.good_thresholds()) if slo_spec else None
    observed = stats.observed_metrics(summary, rates, good)
    missing = {}
    if not any(r.ok for r in records):
        missing = {k: "no successful requests" for k, v in observed.items() if v is None}
    missing.update(rate_notes)
    verdict = evaluate(slo_spec, observed, missing) if slo_spec is not None else None
    server_metrics = None
    if delta is not None:
        server_metrics = ServerMetrics(prefix_hit_rate=delta.get("prefix_hit_rate"),
                                       external_hit_rate=delta.get("external_hit_rate"),
                                       figures={k: v for k, v in delta.items()
                                                if k not in ("prefix_hit_rate",
                                                             "external_hit_rate")})
    target = dict(target)
    target["server_block_size"] = server_block_size
    errors = [f"{r.session_id}#{r.index}: {r.error}" for r in records if r.error][:10]
    return RunResult(name=name, target=target, workload=spec.describe(), seed=seed,
                     started_at=started_at, wall_s=wall_s, metrics=summary,
                     hit_rates=HitRates(designed=rates["designed"], request=rates["request"],
                                        server=rates["server"], notes=rate_notes),
                     server=server_metrics, observed=observed, slo=slo_spec, verdict=verdict,
                     records=records, timeline=tuple(timeline), interrupted=interrupted,
                     errors_sample=tuple(errors))


def format_breach(result: RunResult) -> str:
    """The failure message of a breached SLO: the verdict table plus context."""
    assert result.verdict is not None
    lines = [f"SLO breached ({len(result.verdict.failed)} of {len(result.verdict.checks)} "
             f"objectives) for {result.name}", "", result.verdict.table(), "",
             _context_line(result)]
    if result.errors_sample:
        lines += ["first errors:", *("  " + e for e in result.errors_sample[:5])]
    log_tail = result.target.get("log_tail")
    if log_tail:
        lines += ["server log tail:", log_tail]
    return "\n".join(lines)


def _context_line(result: RunResult) -> str:
    m = result.metrics
    h = result.hit_rates

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1%}"

    return (f"{m['requests']} requests ({m['errors']} errors) in {m['duration_s'] or 0:.1f} s "
            f"against {result.target.get('launcher')} {result.target.get('url')}; hit rate "
            f"designed {pct(h.designed)} / request {pct(h.request)} / server {pct(h.server)}")
