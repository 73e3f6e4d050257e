"""What the subcommands share: exit codes, the KEY=VALUE parser, printing a result."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..assignments import parse_assignments

if TYPE_CHECKING:
    import argparse

    from ..orchestrator.parts import Part
    from ..progress import LiveProgress
    from ..report.result import RunResult
    from ..slo import SLOSpec
    from ..workload.spec import WorkloadSpec

__all__ = ["EXIT_BREACH", "EXIT_OK", "EXIT_SERVER", "EXIT_USAGE", "add_progress_option",
           "finish", "live_progress", "parse_assignments", "print_result",
           "shard_of", "workload_and_slo"]

EXIT_OK = 0  # passed (or nothing to judge)
EXIT_BREACH = 1  # an SLO was breached
EXIT_USAGE = 2  # a usage or configuration error
EXIT_SERVER = 3  # a server or infrastructure error


def add_progress_option(p: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--no-progress``."""
    import argparse

    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a live progress line on standard error (users, in flight, "
                   "requests/s, TTFT p95, hit rate, time left) once the run lasts 2 s. "
                   "Default: only when standard error is a terminal and CI / CTXPLAT_CI "
                   "are not set")


def live_progress(args: Any, title: str) -> LiveProgress | None:
    """The run's live progress display on standard error (None: ``--no-progress``, or
    auto and not a terminal or under CI)."""
    from ..progress import LiveProgress, progress_wanted

    if not progress_wanted(args.progress, sys.stderr):
        return None
    return LiveProgress(title, stderr=True, force_terminal=bool(args.progress))


def workload_and_slo(args: Any) -> tuple[WorkloadSpec, SLOSpec | None]:
    """``args.workload`` with its ``--set`` overrides (definitions are looked up in the
    working directory's ``workloads/``, then the built-ins) and the ``--slo`` objectives;
    errors name the option."""
    from ..slo import parse_slo
    from ..workload.loader import load_workload

    spec = load_workload(args.workload, parse_assignments(args.set, "--set"),
                         dirs=[Path.cwd() / "workloads"], where="--set")
    slo = parse_assignments(args.slo, "--slo")
    return spec, parse_slo(slo, "--slo") if slo else None


def shard_of(shard: str | None, start_at: str | None) -> Part | None:
    """``--shard I/N`` (else an Indexed Job's environment) with ``--start-at`` (else
    ``CTXPLAT_START_AT``); None: not a shard."""
    import dataclasses
    import os

    from ..orchestrator.parts import ENV_START, parse_part, parse_start_at, part_from_env

    part = parse_part(shard, "--shard") if shard else part_from_env()
    if part is None or part.count == 1:
        return None
    start = start_at or os.environ.get(ENV_START)
    where = "--start-at" if start_at else ENV_START
    return dataclasses.replace(part, start_at=None if not start else
                               parse_start_at(start, where))


def finish(result: RunResult, json_path: str | None) -> int:
    """Write ``--json``, print the figures and the verdict; exit code 1 on a breach."""
    from ..orchestrator import format_breach
    from ..report.result import write_json

    if json_path:
        path = write_json(result, Path(json_path).parent)
        if path != Path(json_path):
            path.replace(json_path)
    print_result(result)
    if not result.metrics["requests"]:
        print("ctxplat: note: no request was sent before the run's bound (duration_s, "
              "max_requests or the load stages) ended; a workload's users may start "
              "later (start_spread_s, load.ramp_s)", file=sys.stderr)
    if result.verdict is not None and not result.verdict.passed:
        print(format_breach(result), file=sys.stderr)
        return EXIT_BREACH
    return EXIT_OK


def print_result(result: RunResult) -> None:
    from tabulate import tabulate

    o = result.observed
    h = result.hit_rates
    rows = [
        ["requests / errors", f"{result.metrics['requests']} / {result.metrics['errors']}"],
        ["TTFT p50 / p95 / p99 ms", " / ".join(_f(o.get(f"ttft_ms.{p}")) for p in
                                              ("p50", "p95", "p99"))],
        ["ITL p50 / p99 ms", f"{_f(o.get('itl_ms.p50'))} / {_f(o.get('itl_ms.p99'))}"],
        ["decode tok/s p10 / p50", f"{_f(o.get('decode_tps.p10'))} / "
                                   f"{_f(o.get('decode_tps.p50'))}"],
        ["output tok/s (all)", _f(result.metrics.get("output_tokens_per_s"))],
        ["hit rate designed / request / server",
         " / ".join("n/a" if v is None else f"{v:.1%}" for v in (h.designed, h.request,
                                                                  h.server))],
    ]
    cap = result.capacity
    if cap and "sustained_users" in cap:
        iv = cap.get("interval") or {}
        rows.append(["capacity: sustained users", f"{cap['sustained_users']} (passed "
                     f"{iv.get('highest_passed')}, failed {iv.get('lowest_failed')}; "
                     f"{cap.get('stop_reason')})"])
    print(tabulate(rows, tablefmt="plain"))
    if result.verdict is not None:
        print()
        print(result.verdict.table())


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{v:.1f}"
