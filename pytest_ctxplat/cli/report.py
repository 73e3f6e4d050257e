"""``ctxplat report RESULTS_DIR``: one self-contained HTML report of a results
directory (runs, their designed TTL curves, and analyses)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "report", help="one self-contained HTML report of a results directory",
        description="Render run results (and analysis JSON files found "
                       "there or given with --analysis) as one HTML file with embedded "
                       "plots; the PNGs are also written next to it. Without matplotlib "
                       "(pip install 'pytest-ctxplat[plots]') it is written without "
                       "plots.")
    p.add_argument("results", metavar="RESULTS_DIR", help="directory of result JSON files")
    p.add_argument("-o", "--output", default=None,
                   help="HTML file to write. Default: RESULTS_DIR/report.html")
    p.add_argument("--analysis", action="append", default=[], metavar="FILE",
                   help="analysis JSON (from ctxplat analyze --json) to include, repeatable")
    p.add_argument("--title", default=None, help="report title")
    p.add_argument("--no-infer", action="store_true",
                   help="do not plan each run's workload offline for its designed TTL "
                   "curves")
    return p


def run(args: argparse.Namespace) -> int:
    from ..api import write_html_report
    from ..report.html import plots_note

    path = write_html_report(args.results, args.output, analyses=args.analysis,
                             title=args.title, infer=not args.no_infer)
    note = plots_note()
    if note:  # an optional extra is missing: say so, but the report is written
        print(f"ctxplat report: {note}", file=sys.stderr)
    print(f"wrote {path}")
    return 0
