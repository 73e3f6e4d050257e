"""The ``ctxplat`` command line: one module per subcommand, each with
``add_parser(sub)`` and ``run(args) -> int``.

Exit status: 0 passed (or nothing to judge), 1 an SLO was breached, 2 a usage or
configuration error, 3 a server or infrastructure error (see docs/reference/cli.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import ConfigError, CtxplatError
from . import analyze, compare, fit, make_tiny_model, merge, report, run, serve_sim, simulate
from .common import EXIT_BREACH, EXIT_OK, EXIT_SERVER, EXIT_USAGE

__all__ = ["EXIT_BREACH", "EXIT_OK", "EXIT_SERVER", "EXIT_USAGE", "build_parser", "main"]

SUBCOMMANDS = (run, simulate, analyze, fit, report, compare, merge, serve_sim, make_tiny_model)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctxplat", description="SLO performance tests of LLM inference platforms.",
        epilog="exit status: 0 passed, 1 SLO breached, 2 usage or configuration error, "
        "3 server or infrastructure error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub).set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns its exit status (argparse's 2 for bad arguments)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        code: int = args.run(args)
        return code
    except ConfigError as exc:
        print(f"ctxplat {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CtxplatError as exc:
        print(f"ctxplat {args.command}: {exc}", file=sys.stderr)
        return EXIT_SERVER


