"""``ctxplat run WORKLOAD``: play a workload against a server (a URL, or a simulator it
starts) and print the figures, writing the result JSON with ``--json``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .common import add_progress_option, finish, live_progress, shard_of, workload_and_slo

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "run", help="play a workload against a server and report",
        description="Play a workload against a server (a URL, or a simulator it starts), "
        "print the figures and judge the --slo objectives.")
    p.add_argument("workload", help="workload kind, definition name (./workloads, then "
                   "the built-ins) or YAML file, e.g. chat or coding-agent")
    p.add_argument("--url", help="server base URL (default: start the simulator)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="workload field override, repeatable (e.g. --set users=8)")
    p.add_argument("--slo", action="append", default=[], metavar="KEY=VALUE",
                   help="SLO objective, repeatable (e.g. --slo ttft_p95_ms=500)")
    p.add_argument("--seed", type=int, default=0, help="Default: %(default)r")
    p.add_argument("--model", default=None, help="model name to request")
    p.add_argument("--name", default="run", help="run name (results file, token salt). "
                   "Default: %(default)r")
    p.add_argument("--sim-speedup", type=float, default=1.0,
                   help="the started simulator runs this many times faster than model "
                   "time (above 2, timings stray from the model's: see docs/concepts/"
                   "simulator.md, Timing over HTTP). Default: %(default)r")
    p.add_argument("--no-reset", action="store_true",
                   help="do not POST /reset_prefix_cache before the run")
    p.add_argument("--json", help="write the result JSON to this file")
    p.add_argument("--workers", type=int, default=1, help="play the users from this many "
                   "processes, merged into one result. Default: %(default)r")
    p.add_argument("--shard", default=None, metavar="I/N", help="play shard I of N (judged "
                   "by 'ctxplat merge'). Default: JOB_COMPLETION_INDEX of CTXPLAT_SHARDS "
                   "when set")
    p.add_argument("--start-at", default=None, metavar="TIME", help="the shards' agreed "
                   "start: epoch seconds or ISO 8601. Default: CTXPLAT_START_AT when set")
    add_progress_option(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ..api import run_workload
    from ..servers.base import ServerHandle
    from ..servers.sim import start_sim

    spec, slo = workload_and_slo(args)
    part = shard_of(args.shard, args.start_at)
    parts_dir = None
    if part is not None and args.workers > 1:  # each worker's part is a file of its own
        if not args.json:
            raise ConfigError("--workers with --shard: give --json FILE; the workers' "
                              "parts are written beside it")
        parts_dir = Path(args.json).parent
    sim = None
    server: str | ServerHandle | None = args.url
    if server is None:
        sim = server = start_sim({"speedup": args.sim_speedup, "seed": args.seed})
    display = live_progress(args, args.name)
    try:
        result = run_workload(server, spec, slo=slo, seed=args.seed, name=args.name,
                              model=args.model, reset_cache=not args.no_reset,
                              on_progress=display, workers=args.workers, part=part,
                              results_dir=parts_dir)
    finally:
        if display is not None:
            display.close()
        if sim is not None:
            sim.close()
    return finish(result, args.json)
