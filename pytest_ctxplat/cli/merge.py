"""``ctxplat merge DIR...``: the results of every shard of a split run (``--ctxplat-shard
I/N``, ``ctxplat run --shard``) merged into one result per test, in the schema of an
unsharded run, and judged on the merged data. Exit status as for ``ctxplat run``."""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .common import EXIT_BREACH, EXIT_OK, EXIT_SERVER, print_result

__all__ = ["add_parser", "find_parts", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "merge", help="merge the shards of split runs into one judged result per test",
        description="Merge the result files of every shard (folders or files; each "
        "shard's results carry the shard in their names) into one result per test and "
        "judge its SLOs on the merged records.")
    p.add_argument("paths", nargs="+", metavar="DIR", help="results folders (or result "
                   "files) of the shards")
    p.add_argument("--json", default=None, metavar="OUT", help="write the merged results: "
                   "OUT ending in .json is the file of the one test merged; else a folder "
                   "(one file per test, named as an unsharded run's)")
    return p


def find_parts(paths: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The shard result documents under ``paths``, by test name. Results of unsplit runs
    are skipped; no shard result at all is a usage error."""
    from ..report.result import read_document

    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(path.glob("*.json")))
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"{raw}: no such file or folder")
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in files:
        doc = read_document(f, "schema_version", "a ctxplat result")
        parts = doc.get("parts")
        if isinstance(parts, dict) and "index" in parts:
            found[parts["test"]].append(doc)
    if not found:
        raise ConfigError(f"{', '.join(paths)}: no shard results (files written with "
                          "--ctxplat-shard I/N or ctxplat run --shard)")
    return dict(found)


def run(args: argparse.Namespace) -> int:
    from ..orchestrator import format_breach
    from ..orchestrator.parts import merge_parts
    from ..report.result import write_json

    groups = find_parts(args.paths)
    results = [merge_parts(docs, f"ctxplat merge: {name}") for name, docs in
               sorted(groups.items())]
    if args.json:
        out = Path(args.json)
        if out.suffix == ".json":
            if len(results) > 1:
                raise ConfigError(f"--json {out}: {len(results)} tests merged; give a "
                                  "folder for their results, not one .json file")
            path = write_json(results[0], out.parent)
            if path != out:
                path.replace(out)
        else:
            for result in results:
                write_json(result, out)
    code = EXIT_OK
    for result in results:
        print(f"== {result.name} ({result.parts and result.parts['count']} shards)")
        print_result(result)
        if result.target.get("alive_after_run") is False:
            print(f"ctxplat merge: the server died during {result.name}", file=sys.stderr)
            code = max(code, EXIT_SERVER)
        elif result.verdict is not None and not result.verdict.passed:
            print(format_breach(result), file=sys.stderr)
            code = max(code, EXIT_BREACH)
    return code

