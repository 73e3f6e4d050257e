"""``ctxplat simulate WORKLOAD --profile P``: a workload against a simulated deployment in
virtual time (driver and simulator in one process), printing the figures of
``ctxplat run``.

Options: ``--set KEY=VALUE`` (workload fields), ``--profile-set KEY=VALUE`` (dotted
profile keys, e.g. ``tiers.1.capacity_gb=64``), ``--slo KEY=VALUE``, ``--seed``,
``--name``, ``--json FILE``, ``--list-profiles``.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError
from .common import (
    EXIT_OK,
    add_progress_option,
    finish,
    live_progress,
    parse_assignments,
    workload_and_slo,
)

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "simulate", help="play a workload against a simulated deployment in virtual time",
        description="Play a workload against a simulated deployment (a hardware "
        "profile) in virtual time, driver and simulator in one process; print the "
        "figures of ctxplat run.")
    p.add_argument("workload", nargs="?", help="workload kind or YAML definition")
    p.add_argument("--profile", default="h100-llama8b",
                   help="hardware profile: a built-in name (see --list-profiles) or a "
                   "YAML file. Default: %(default)r")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="workload field override, repeatable (e.g. --set users=200)")
    p.add_argument("--profile-set", action="append", default=[], metavar="KEY=VALUE",
                   help="profile override by dotted key, repeatable (e.g. tp=2)")
    p.add_argument("--slo", action="append", default=[], metavar="KEY=VALUE",
                   help="SLO objective, repeatable (e.g. --slo ttft_p95_ms=500)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the workload and the simulator. Default: %(default)r")
    p.add_argument("--name", default="simulate",
                   help="run name (results file, token salt). Default: %(default)r")
    p.add_argument("--json", help="write the result JSON to this file")
    p.add_argument("--list-profiles", action="store_true",
                   help="list the built-in hardware profiles")
    add_progress_option(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ..api import simulate
    from ..sim.hardware import hardware_names, load_hardware

    if args.list_profiles:
        for name in hardware_names():
            d = load_hardware(name).describe()
            tiers = " + ".join(f"{t['name']} {t['capacity_tokens']:,} tok" for t in d["tiers"])
            print(f"{name:26} {d['model']} on {d['tp']} x {d['accelerator']}: {tiers}")
        return EXIT_OK
    if not args.workload:
        raise ConfigError("give a WORKLOAD (a kind such as chat, or a YAML file)")
    spec, slo = workload_and_slo(args)
    display = live_progress(args, args.name)
    try:
        result = simulate(spec, args.profile,
                          profile_overrides=parse_assignments(args.profile_set,
                                                              "--profile-set"),
                          slo=slo, seed=args.seed, name=args.name, on_progress=display)
    finally:
        if display is not None:
            display.close()
    return finish(result, args.json)
