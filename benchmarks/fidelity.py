"""Hold the simulator against published measurements.

    python benchmarks/fidelity.py [--points FILE] [--json OUT]

Reads a YAML list of points (format: :mod:`pytest_ctxplat.sim.fidelity`; the repo's own
is ``benchmarks/fidelity_points.yaml``), simulates each on the virtual clock with the
profiles as shipped (nothing is fitted here: see ``scripts/fit_sim_profiles.py``), prints
published, simulated and simulated / published per point, and with ``--json`` writes the
rows as a JSON list. Exit status 2 on a bad points file (the message names the file,
line and key).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pytest_ctxplat.errors import CtxplatError
from pytest_ctxplat.sim.fidelity import format_table, load_points, run_points

DEFAULT = Path(__file__).resolve().parent / "fidelity_points.yaml"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="simulated vs published figures")
    ap.add_argument("--points", default=str(DEFAULT), help="YAML list of points")
    ap.add_argument("--json", default=None, help="write the rows here as JSON")
    args = ap.parse_args(argv)
    try:
        rows = run_points(load_points(args.points))
    except CtxplatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
