"""The ``ctxplat`` command line.

``ctxplat serve-sim`` runs the embedded simulator; ``ctxplat run`` plays a workload
against a server (a URL, or a simulator it starts) and prints the figures, writing JSON
with ``--json``. Exit status: 0 ok, 1 SLO breached, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["main"]


def _kv(items: Sequence[str], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"ctxplat: {what} must look like KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def _cmd_serve_sim(argv: list[str]) -> int:
    from .sim.server import main as sim_main

    return sim_main(argv)


def _cmd_run(args: argparse.Namespace) -> int:
    from .api import run_workload
    from .errors import ConfigError
    from .servers.sim import start_sim

    try:
        overrides = _kv(args.set, "--set")
        slo = _kv(args.slo, "--slo") or None
        server = args.url
        sim = None
        if server is None:
            sim = start_sim({"speedup": args.sim_speedup, "seed": args.seed})
            server = sim
        try:
            result = run_workload(server, args.workload, overrides=overrides, slo=slo,
                                  seed=args.seed, name=args.name, model=args.model,
                                  reset_cache=not args.no_reset)
        finally:
            if sim is not None:
                sim.close()
    except ConfigError as exc:
        print(f"ctxplat run: {exc}", file=sys.stderr)
        return 2
    return _finish(result, args.json)


def _finish(result: Any, json_path: str | None) -> int:
    """Write ``--json``, print the figures and the verdict; exit 1 on a breached SLO."""
    from .api import format_breach
    from .report.result import write_json

    if json_path:
        path = write_json(result, Path(json_path).parent)
        if path != Path(json_path):
            path.replace(json_path)
    _print_result(result)
    if result.verdict is not None and not result.verdict.passed:
        print(format_breach(result), file=sys.stderr)
        return 1
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .sim import simulate_cli

    try:
        result = simulate_cli.run(args, _kv)
    except ConfigError as exc:
        print(f"ctxplat simulate: {exc}", file=sys.stderr)
        return 2
    if result is None:
        return 0
    return _finish(result, args.json)


def _print_result(result: Any) -> None:
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
    print(tabulate(rows, tablefmt="plain"))
    if result.verdict is not None:
        print()
        print(result.verdict.table())


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve-sim":
        return _cmd_serve_sim(argv[1:])
    if argv and argv[0] == "make-tiny-model":
        from .tinymodel import main as tiny_main

        return tiny_main(argv[1:])
    parser = argparse.ArgumentParser(prog="ctxplat", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("make-tiny-model", help="write a tiny Llama-shaped model folder for "
                   "vLLM --load-format dummy (see make-tiny-model --help)", add_help=False)
    sub.add_parser("serve-sim", help="run the embedded simulator (see serve-sim --help)",
                   add_help=False)
    run = sub.add_parser("run", help="play a workload against a server and report")
    run.add_argument("workload", help="workload kind or YAML definition (e.g. chat)")
    run.add_argument("--url", help="server base URL (default: start the simulator)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="workload field override, repeatable (e.g. --set users=8)")
    run.add_argument("--slo", action="append", default=[], metavar="KEY=VALUE",
                     help="SLO objective, repeatable (e.g. --slo ttft_p95_ms=500)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--model", default=None)
    run.add_argument("--name", default="run")
    run.add_argument("--sim-speedup", type=float, default=1.0)
    run.add_argument("--no-reset", action="store_true",
                     help="do not POST /reset_prefix_cache before the run")
    run.add_argument("--json", help="write the result JSON to this file")
    from .sim import simulate_cli

    simulate_cli.add_parser(sub)
    from .analysis import cli as analysis_cli

    analysis_cli.add_analyze_parser(sub)
    analysis_cli.add_report_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "run":
        return _cmd_run(args)
    if args.command == "analyze":
        return analysis_cli.run_analyze(args)
    if args.command == "report":
        return analysis_cli.run_report(args)
    if args.command == "simulate":
        return _cmd_simulate(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
