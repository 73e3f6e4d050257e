"""``ctxplat serve-sim``: run the embedded simulator as an OpenAI-compatible server on
127.0.0.1 (until SIGTERM or Ctrl-C)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    from ..sim.server import DESCRIPTION, add_arguments

    p: argparse.ArgumentParser = sub.add_parser("serve-sim", help="run the embedded simulator",
                                                description=DESCRIPTION)
    add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ..sim.server import serve

    return serve(args)
