"""``ctxplat fit``: a workload definition fitted to traces, and the realism report."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import orjson

from ..assignments import parse_assignments
from ..errors import ConfigError

__all__ = ["add_parser", "run"]

KINDS = ("coding_agent", "coding_swarm", "chat")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "fit", help="fit a workload definition to traces (distributions only, no prompts) "
        "and report how close it comes",
        description="Fit a coding_agent / coding_swarm definition to kv-cache-tester "
        "sessions, or a chat definition to Mooncake-style JSONL; print (and with --report "
        "write) the realism report: source against synthetic, per session.")
    p.add_argument("sources", nargs="+", metavar="PATH", help="trace files or folders")
    p.add_argument("-o", "--output", required=True, metavar="WORKLOAD.yaml",
                   help="where to write the fitted workload definition")
    p.add_argument("--report", default=None, metavar="REPORT.json",
                   help="write the realism report as JSON")
    p.add_argument("--kind", choices=KINDS, default=None,
                   help="kind to fit. Default: coding_swarm where the sessions have "
                   "subagents, else coding_agent; chat for Mooncake traces")
    p.add_argument("--format", dest="fmt", choices=("kv-cache-tester", "mooncake"),
                   default=None, help="trace format (default: detected)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set a top-level key of the definition (users, duration_s, "
                   "recycle, designed_ttl_s, ...), repeatable")
    p.add_argument("--description", default=None, help="the definition's description")
    p.add_argument("--sessions", type=int, default=None,
                   help="synthetic sessions played for the report. Default: as many as "
                   "the source has, at least 200")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic play")
    return p


def run(args: argparse.Namespace) -> int:
    from ..analysis.fit import definition_yaml, fit_agent, fit_chat, read_agent_samples
    from ..analysis.realism import format_realism, realism_report
    from ..analysis.sources import load_sources
    from ..workload.loader import load_workload

    if args.sessions is not None and args.sessions <= 0:
        raise ConfigError(f"--sessions must be > 0, got {args.sessions}")
    extra = parse_assignments(args.set, "--set")
    for src in args.sources:
        if not Path(src).exists():
            raise ConfigError(f"file not found: {src}")
    trace = load_sources(args.sources, fmt=args.fmt)
    mooncake = "mooncake" in trace.formats
    if mooncake and args.kind not in (None, "chat"):
        raise ConfigError(f"--kind {args.kind} needs kv-cache-tester sessions; Mooncake "
                          "traces fit a chat definition")
    if mooncake or args.kind == "chat":
        if not mooncake:
            raise ConfigError("--kind chat needs Mooncake-style traces")
        definition, info = fit_chat(args.sources)
    else:
        definition, info = fit_agent(read_agent_samples(args.sources), args.kind)
    if "distributions" in extra:
        raise ConfigError("--set distributions is what the fit writes; set top-level "
                          "keys only")
    head = {"kind": definition.pop("kind"),
            "description": args.description or f"fitted to {len(trace):,} requests"}
    definition = {**head, **extra, **{k: v for k, v in definition.items() if k not in extra}}
    command = "ctxplat fit " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if len(sys.argv) > 1 and sys.argv[1] == "fit" else "ctxplat fit (from Python)"
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(definition_yaml(definition, command), encoding="utf-8")
    spec = load_workload(str(out), where="ctxplat fit")
    sessions = args.sessions or (info.get("conversations") if mooncake else None)
    doc = realism_report(trace, spec, sessions=sessions, seed=args.seed,
                         per_session=not mooncake)
    doc["fit"] = info
    doc["definition"] = str(out)
    print(f"wrote {out}")
    print(format_realism(doc))
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2
                                                   | orjson.OPT_SERIALIZE_NUMPY))
    return 0
