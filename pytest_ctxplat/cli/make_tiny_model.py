"""``ctxplat make-tiny-model DIR``: a tiny Llama-shaped model folder for vLLM with
``--load-format dummy`` (nothing is downloaded)."""

from __future__ import annotations

import argparse
from typing import Any

from .. import tinymodel

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "make-tiny-model", help="write a tiny Llama-shaped model folder for vLLM "
        "--load-format dummy", description=tinymodel.DESCRIPTION)
    tinymodel.add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    return tinymodel.run(args)
