"""``workers=N``: one workload's users split across N worker processes on this machine.

Each worker is a process of its own (spawned, with its own event loop and HTTP client)
that plays one part of the run (:mod:`~.parts`: its share of the users, its own block
ids and token salt) against the same server. Every worker prepares its target (probe;
only the first resets the server's cache), then all wait at one start barrier
(:func:`~pytest_ctxplat.driver.multiproc.run_in_processes`) and start together at one
wall-clock time. A run bounded by ``max_requests`` is one pool of requests that the
workers draw from (:mod:`~pytest_ctxplat.driver.budget`), so they end together. Their
results come back to this process and merge into one
:class:`~pytest_ctxplat.report.result.RunResult` and one verdict (:func:`~.parts.merge_parts`).

Only an HTTP target can be split: the simulator's in-process target (``simulate``) runs
its engines in the caller's loop and is always played whole.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

from ..driver.budget import RequestBudget
from ..driver.limits import ClientLimits
from ..driver.multiproc import new_event_loop, run_in_processes, tuned_gc
from ..errors import ConfigError
from ..report.result import RunResult, write_document, write_json
from ..servers.attach import AttachedServer
from ..servers.base import ServerHandle, ServerInfo
from ..workload.spec import WorkloadSpec
from .core import PlayOptions, play
from .parts import Part, merge_parts, part_spec, split_refusal

__all__ = ["START_MARGIN_S", "play_workers"]

START_MARGIN_S = 0.2  # the start line: this long after the last worker is ready


class _Attached(AttachedServer):
    """The parent's server as a worker reaches it: its URL, headers and description."""

    def __init__(self, url: str, headers: dict[str, str], info: ServerInfo,
                 capabilities: Any, reset_cache: bool | None) -> None:
        super().__init__(url, reset_cache=reset_cache)
        self._headers = headers
        self.info = info
        self.capabilities = capabilities

    def headers(self) -> dict[str, str]:
        return dict(self._headers)


def check_workers(spec: WorkloadSpec, options: PlayOptions, workers: int) -> None:
    """Raise :class:`ConfigError` when ``spec`` cannot be split in ``workers`` parts."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers: expected an integer >= 1, got {workers!r}")
    parts = workers * (options.part.count if options.part is not None else 1)
    refusal = split_refusal(spec, options.slo, parts) if workers > 1 else None
    if refusal:
        raise ConfigError(f"workers={workers}: {options.name} cannot be split: {refusal}; "
                          "play it with workers=1")


async def play_workers(spec: WorkloadSpec, handle: ServerHandle, options: PlayOptions,
                       workers: int, *, model: str | None = None, reset_cache: bool = True,
                       time_scale: float | None = None, limits: ClientLimits | None = None,
                       timeout_s: float | None = None) -> RunResult:
    """Play ``spec`` against ``handle``'s server from ``workers`` processes and return
    the merged, judged result (written to ``options.results_dir``). Raises
    :class:`ConfigError` when the workload cannot be split (see
    :func:`~.parts.split_refusal`), ``DriverError`` when a worker fails.

    A shard (``options.part``, I of N) played by ``workers`` processes is parts
    ``I * workers + j`` of ``N * workers``: each worker's result is written as a part
    of its own (``ctxplat merge`` pools all of them); the result returned pools this
    shard's parts, unjudged."""
    check_workers(spec, options, workers)
    shard = options.part
    base = dataclasses.replace(options, on_progress=None, results_dir=None, ready=None)
    reset = reset_cache if handle.reset_cache is None else handle.reset_cache
    first, count = (0, workers) if shard is None else (shard.index * workers,
                                                       shard.count * workers)
    budget = _shared_budget(spec, first, count, workers)
    args = [{"url": handle.url, "headers": handle.headers(), "info": handle.info,
             "capabilities": handle.capabilities, "reset_cache": reset and i == 0,
             "model": model, "time_scale": time_scale, "limits": limits, "spec": spec,
             "options": dataclasses.replace(base, part=Part(first + i, count), budget=budget)}
            for i in range(workers)]
    agreed = 0.0 if shard is None or shard.start_at is None else shard.start_at
    docs = await asyncio.to_thread(run_in_processes, _play_main, args,
                                   start=lambda: max(agreed, time.time() + START_MARGIN_S),
                                   timeout_s=timeout_s)
    if shard is not None and options.results_dir is not None:
        for doc in docs:
            write_document(doc, Path(options.results_dir))
    result = merge_parts(docs, f"{options.name}: workers={workers}", partial=shard is not None)
    alive = handle.alive()
    target = {**result.target, "alive_after_run": alive,
              "log_tail": None if alive else handle.log_tail()}
    result = dataclasses.replace(result, target=target)
    if options.results_dir is not None and shard is None:
        write_json(result, Path(options.results_dir))
    return result


def _shared_budget(spec: WorkloadSpec, first: int, count: int, workers: int
                   ) -> RequestBudget | None:
    """One pool for the workers' requests (their parts' shares of ``max_requests``
    together), so they end together; None for a run not bounded by a request count."""
    if spec.max_requests is None:
        return None
    shares = (part_spec(spec, Part(first + i, count)).max_requests for i in range(workers))
    return RequestBudget(sum(n or 0 for n in shares), workers)


def _play_main(args: dict[str, Any], conn: Any) -> None:
    """A worker process: play its part, send back its result document."""
    from .http import HttpTarget

    try:
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        handle = _Attached(args["url"], args["headers"], args["info"], args["capabilities"],
                           args["reset_cache"])
        target = HttpTarget(handle, model=args["model"], reset_cache=args["reset_cache"],
                            time_scale=args["time_scale"], limits=args["limits"])

        def ready() -> float:
            conn.send(("ready", None))
            start_at: float = conn.recv()
            return start_at

        options = dataclasses.replace(args["options"], ready=ready)
        with tuned_gc():
            result = loop.run_until_complete(play(args["spec"], target, options))
        loop.close()
        conn.send(("done", result.to_dict()))
    except BaseException as exc:  # reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()
