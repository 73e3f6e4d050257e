"""Judging a workload over several runs: ``repeat=N`` and reruns of an inconclusive
verdict.

:func:`play_judged` plays the workload ``repeat`` times (each run with its own token
salt, so no run is served from another's cache), pooling every run's measurement window
into one judgment. Under ``on_inconclusive="rerun"`` an inconclusive verdict plays the
workload again, up to ``max_reruns`` times, pooling the new requests, until the verdict
is clear; one still inconclusive then fails. The last run's result carries the pooled
verdict, the records of every run and, in its ``window`` section, the spread across
runs.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable

from ..report.records import RequestRecord
from ..report.result import RunResult
from ..workload.spec import WorkloadSpec
from .core import PlayOptions, Target, play

__all__ = ["play_judged"]


async def play_judged(spec: WorkloadSpec, make_target: Callable[[], Target],
                      options: PlayOptions) -> RunResult:
    """:func:`~.core.play` as many times as ``options.slo`` asks (``repeat``, then
    reruns while inconclusive under ``on_inconclusive="rerun"``); ``make_target`` makes
    a fresh target for each run. Without an SLO: one run."""
    slo = options.slo
    salt = zlib.crc32(options.name.encode()) if options.token_salt is None \
        else options.token_salt
    runs: list[tuple[RequestRecord, ...]] = []
    repeat = slo.repeat if slo is not None else 1
    reruns = slo.max_reruns if slo is not None and slo.on_inconclusive == "rerun" else 0
    result: RunResult | None = None
    while True:
        result = await play(spec, make_target(), dataclasses.replace(
            options, token_salt=salt + len(runs), earlier_runs=tuple(runs)))
        seen = sum(len(r) for r in runs)
        runs.append(tuple(result.records[seen:]))
        v = result.verdict
        if v is None or v.incomplete is not None:
            return result
        if len(runs) < repeat:
            continue
        if v.status != "inconclusive" or len(runs) >= repeat + reruns:
            return result
