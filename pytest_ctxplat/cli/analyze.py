"""``ctxplat analyze``: cache analysis of traces or a workload (TTL and LRU hit rates,
working sets, tier sizing, cost); prints tables, writes JSON and plots."""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError
from .common import parse_assignments

__all__ = ["add_parser", "format_analysis", "run"]

PLOTS_MISSING = "--plots needs the plots extra: pip install 'pytest-ctxplat[plots]'"


def _ttls(text: str) -> list[float]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        try:
            v = math.inf if part in ("inf", "infinite") else float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--ttl takes seconds separated by commas (e.g. 60,300,3600), got {part!r}"
            ) from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"--ttl values must be > 0 seconds, got {part!r}")
        out.append(v)
    return out


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "analyze", help="cache analysis of traces or a workload: TTL/LRU hit rates, "
        "working sets, tier sizing, cost",
        description="Analyse kv-cache-tester sessions (files or folders), Mooncake JSONL "
        "traces, or a workload (kind, definition name or YAML file).")
    p.add_argument("sources", nargs="+", metavar="PATH",
                   help="trace files/folders, or one workload name or YAML file")
    p.add_argument("--ttl", type=_ttls, default=[60.0, 300.0, 3600.0],
                   help="cache TTLs in seconds, comma separated. Default: 60,300,3600")
    p.add_argument("--model", "--model-profile", dest="model", default="llama-3.1-8b",
                   help="model for GB figures (a built-in name or "
                   "LAYERSxKV_HEADSxHEAD_DIM[xBYTES]). Default: llama-3.1-8b")
    p.add_argument("--users", type=int, default=100,
                   help="concurrent users for tier sizing. Default: 100")
    p.add_argument("--target-hit-rate", type=float, default=None,
                   help="block hit rate the tiers must reach. Default: 95%% of the "
                   "infinite-cache rate")
    p.add_argument("--hbm-ttl", type=float, default=30.0,
                   help="reuse within this many seconds is served from HBM. Default: 30")
    p.add_argument("--dram-ttl", type=float, default=300.0,
                   help="reuse within this many seconds is served from DRAM. Default: 300")
    p.add_argument("--pricing", default=None, help="YAML price file (adds/replaces tables)")
    p.add_argument("--price-table", default=None,
                   help="price table to use. Default: the file's default (anthropic-sonnet)")
    p.add_argument("--lru-points", type=int, default=10, help="LRU curve points. Default: 10")
    p.add_argument("--format", dest="fmt", choices=("kv-cache-tester", "mooncake"),
                   default=None, help="trace format (default: detected)")
    p.add_argument("--strict", action="store_true",
                   help="refuse a trace with odd records (read with an assumption or "
                   "dropped) instead of counting them; the error names the file and record")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="workload field override, repeatable")
    p.add_argument("--per-session", action="store_true",
                   help="a workload's figures per session, as for kv-cache-tester folders: "
                   "each session (with its subagents) is a session of the trace and its "
                   "blocks are its own, not shared with other sessions")
    p.add_argument("--seed", type=int, default=0, help="workload seed. Default: 0")
    p.add_argument("--duration", type=float, default=None,
                   help="workload duration bound in seconds (default: the spec's, else 3600)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the analysis JSON")
    p.add_argument("--plots", default=None, metavar="DIR",
                   help="write ttl_curves.png and lru_curve.png into DIR (needs the plots "
                   "extra; without it they are skipped with a note)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..analysis.analyze import analyze
    from ..analysis.pricing import price_table
    from ..analysis.sources import load_sources
    from ..catalog import model_for_sizing

    if args.users <= 0:
        raise ConfigError(f"--users must be > 0, got {args.users}")
    if args.target_hit_rate is not None and not 0 < args.target_hit_rate <= 1:
        raise ConfigError(f"--target-hit-rate must be in (0, 1], got {args.target_hit_rate}")
    if not (0 < args.hbm_ttl <= args.dram_ttl):
        raise ConfigError("--hbm-ttl and --dram-ttl must satisfy 0 < hbm-ttl <= dram-ttl")
    if args.lru_points < 2:
        raise ConfigError(f"--lru-points must be >= 2, got {args.lru_points}")
    model = model_for_sizing(args.model)
    prices = price_table(args.price_table, args.pricing)
    plots_dir = args.plots
    if plots_dir and not _have_matplotlib():  # say so before the (long) analysis
        print(f"ctxplat analyze: {PLOTS_MISSING}; skipping the plots", file=sys.stderr)
        plots_dir = None
    trace = load_sources(args.sources, fmt=args.fmt, seed=args.seed,
                         duration_s=args.duration, overrides=parse_assignments(args.set, "--set"),
                         strict=args.strict, per_session=args.per_session)
    result = analyze(trace, args.ttl, lru_points=args.lru_points, model=model,
                     users=args.users, target_hit_rate=args.target_hit_rate,
                     hbm_ttl_s=args.hbm_ttl, dram_ttl_s=args.dram_ttl, prices=prices,
                     sources=list(args.sources))
    doc = result.to_dict()
    print(format_analysis(doc))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_bytes(orjson.dumps(_jsonable(doc), option=orjson.OPT_INDENT_2))
    if plots_dir:
        _write_plots(Path(plots_dir), doc)
    return 0


def _have_matplotlib() -> bool:
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except ValueError:  # imported in an unusual way: let the plots try
        return True


def _write_plots(out: Path, doc: dict[str, Any]) -> None:
    from ..report import plots

    try:
        ttl, lru = plots.ttl_curves(doc), plots.lru_curve(doc)
    except plots.PlotsUnavailable as exc:  # matplotlib there but unusable
        print(f"ctxplat analyze: {exc}; skipping the plots", file=sys.stderr)
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "ttl_curves.png").write_bytes(ttl)
    (out / "lru_curve.png").write_bytes(lru)


def _jsonable(v: Any) -> Any:
    """JSON has no infinity: write it as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


def format_analysis(doc: dict[str, Any]) -> str:
    from tabulate import tabulate

    gb = doc.get("model") is not None
    lines = [
        f"{doc['name']}: {doc['requests']:,} requests, {doc['sessions']} sessions, "
        f"{doc['distinct_blocks']:,} distinct blocks of {doc['block_size']} tokens, "
        f"span {doc['span_s'] / 3600:.2f} h",
        f"infinite cache: block hit rate {doc['infinite']['block_hit_rate']:.1%}, "
        f"token hit rate {doc['infinite']['token_hit_rate']:.1%}",
        *_odd_lines(doc.get("odd_records") or {}),
        "",
    ]
    cost = (doc.get("cost") or {}).get("ttl", {})
    rows = []
    for ttl, s in doc["ttl"].items():
        c = cost.get(ttl, {})
        row = [ttl, f"{s['block_hit_rate']:.1%}", f"{s['token_hit_rate']:.1%}",
               f"{s['peak_working_set_tokens']:,}", f"{s['mean_working_set_tokens']:,.0f}"]
        if gb:
            row += [f"{s['peak_working_set_gb']:.1f}", f"{s['mean_working_set_gb']:.1f}"]
        row.append(f"{s['misses_per_block']:.2f}")
        if cost:
            sf = c.get("saving_fraction")
            if c.get("cost_usd") is None:
                row.append("n/a (TTL not priced)")
            else:
                note = f"{sf:.0%} saved" if sf >= 0 else f"{-sf:.0%} more"
                row.append(f"${c['cost_usd']:,.2f} ({note})")
        rows.append(row)
    head = ["TTL s", "block hit", "token hit", "peak WS tok", "mean WS tok"]
    if gb:
        head += ["peak GB", "mean GB"]
    head.append("misses/block")
    if cost:
        head.append(f"cost ({doc['cost']['table']['name']})")
    lines.append(tabulate(rows, headers=head, tablefmt="simple", disable_numparse=True))
    if cost:
        base = next(iter(cost.values()))["baseline_usd"]
        lines.append(f"without caching: ${base:,.2f}")
    lines.append("")
    lru_rows = [[f"{p['capacity_tokens']:,}"] + ([f"{p['capacity_gb']:.2f}"] if gb else [])
                + [f"{p['block_hit_rate']:.1%}"] for p in doc["lru"]]
    lines.append(tabulate(lru_rows, headers=["LRU capacity tok"] + (["GB"] if gb else [])
                          + ["block hit"], tablefmt="simple", disable_numparse=True))
    t = doc.get("tiers")
    if t:
        lines.append("")
        target = f"{t['target_block_hit_rate']:.1%}"
        if not t["reachable"]:
            lines.append(f"tier sizing: a block hit rate of {target} is not reachable with "
                         "a finite TTL on this trace")
        else:
            unit = "GB" if t["gb"] else "tokens"
            vals = t["gb"] or t["tokens"]
            lines.append(
                f"tier sizing for {t['users']} users, block hit rate {target} "
                f"(TTL {t['target_ttl_s']:g} s): HBM {vals['hbm']:,.1f} {unit}, DRAM "
                f"{vals['dram']:,.1f} {unit}, NVMe {vals['nvme']:,.1f} {unit}, total "
                f"{vals['total']:,.1f} {unit}")
        if doc.get("sessions") == 1 and "mooncake" in doc.get("formats", []):
            lines.append("note: this trace is one stream (no sessions), so each 'user' is a "
                         "copy of the whole trace; use --users 1 to size for it as recorded")
    return "\n".join(lines)


def _odd_lines(odd: dict[str, Any]) -> list[str]:
    """One line per kind of odd record: count, what was assumed, the first one seen."""
    if not odd:
        return []
    total = sum(v["count"] for v in odd.values())
    lines = [f"odd records: {total:,} (--strict refuses those marked *)"]
    for kind, v in odd.items():
        mark = "*" if v.get("strict") else " "
        lines.append(f" {mark}{kind}: {v['count']:,} - {v['assumed']} (first: {v['first']})")
    return lines
