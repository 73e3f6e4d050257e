"""``ctxplat compare A B``: judge results B against baseline A, test by test, as
``--ctxplat-compare`` does in pytest.

A and B are each a result JSON file, a baseline directory (``ctxplat-baselines/v1.4``,
holding ``index.json``) or a results directory (``ctxplat-results``: every result JSON
in it). Tests are matched by id; ``--test TEXT`` keeps those whose id contains TEXT;
``--tolerance METRIC=VALUE`` (repeatable) overrides a tolerance. Exit status: 0 no
regression, 1 a regression, 2 a usage or configuration error (an unreadable file, an
incompatible baseline, nothing to compare).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..report.result import read_document
from .common import EXIT_BREACH, EXIT_OK, parse_assignments

__all__ = ["add_parser", "load_side", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "compare", help="judge results against a baseline (tolerances + significance test)",
        description="Judge results B against baseline A test by test: per-metric "
        "tolerances and a Mann-Whitney U test over per-request samples. A and B are result "
        "JSON files, baseline directories or results directories.")
    p.add_argument("baseline", metavar="A", help="the baseline: a result JSON file, a "
                   "baseline directory or a results directory")
    p.add_argument("now", metavar="B", help="the results to judge (same kinds as A)")
    p.add_argument("--test", default=None, metavar="TEXT",
                   help="only tests whose id contains TEXT")
    p.add_argument("--tolerance", action="append", default=[], metavar="METRIC=VALUE",
                   help="tolerance override, repeatable (e.g. ttft_ms_p95=+15%%, "
                   "latency=+20%%, hit_rate_request=0.03)")
    return p


def _read(path: Path) -> dict[str, Any]:
    return read_document(path, "observed", "a result or baseline entry")


def load_side(ref: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """``(label, {test id: result or entry})`` of one side of the comparison."""
    from ..report.baseline import load_entry, load_index

    path = Path(ref)
    if path.is_file():
        data = _read(path)
        return path.name, {str(data.get("name") or data.get("test")): data}
    if (path / "index.json").is_file():
        index = load_index(path.parent, path.name)
        found = {t: load_entry(path.parent, path.name, t) for t in index["tests"]}
        return path.name, {t: e for t, e in found.items() if e is not None}
    if path.is_dir():
        out: dict[str, dict[str, Any]] = {}
        for file in sorted(path.glob("*.json")):
            try:
                data = _read(file)
            except ConfigError:
                continue  # an analysis or report file beside the results
            out[str(data.get("name"))] = data
        if out:
            return path.name, out
        raise ConfigError(f"{ref}: no result JSON files in this directory")
    raise ConfigError(f"{ref}: no such file or directory; give a result JSON file, a "
                      "baseline directory or a results directory")


def run(args: argparse.Namespace) -> int:
    from ..report.baseline import check_compatible, entry_from_result
    from ..report.regression import compare, parse_tolerances

    tolerances = parse_tolerances(parse_assignments(args.tolerance, "--tolerance"),
                                  "--tolerance")
    name, base = load_side(args.baseline)
    _, now = load_side(args.now)
    if len(base) == 1 and len(now) == 1:  # two files: compare them whatever their names
        now = {next(iter(base)): next(iter(now.values()))}
    tests = [t for t in now if args.test is None or args.test in t]
    if not tests:
        raise ConfigError(f"no test to compare in {args.now}"
                          + (f" matching --test {args.test!r}" if args.test else ""))
    regressed = compared = 0
    for test in tests:
        if test not in base:
            print(f"ctxplat compare: warning: {args.baseline} has no entry for {test}: "
                  "not compared", file=sys.stderr)
            continue
        a, b = entry_from_result(base[test]), entry_from_result(now[test])
        warnings = check_compatible(a["provenance"], b["provenance"], name, test)
        result = compare(b, a, tolerances=tolerances, name=name, test=test,
                         warnings=warnings)
        print(result.table(), end="\n\n")
        compared += 1
        regressed += not result.passed
    if not compared:
        raise ConfigError(f"{args.baseline} has none of the tests in {args.now}")
    print(f"ctxplat compare: {compared} test(s) compared, {regressed} regressed")
    return EXIT_BREACH if regressed else EXIT_OK
