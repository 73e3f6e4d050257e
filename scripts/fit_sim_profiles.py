"""Fit the simulator's timing parameters to published points (least squares).

    python scripts/fit_sim_profiles.py [--points FILE] [--request-overhead]

Fits, on the points marked ``fitted: true``, the parameters below by least squares on
log(simulated / published) (scipy's ``least_squares``); the other points are held out
and only predicted. Prints the fitted values, the YAML to paste into
``pytest_ctxplat/builtin/accelerators.yaml`` and ``hardware.yaml``, and the fidelity
table with the fitted values. Nothing in the package changes; ship the values by hand.

Parameters (H100 and H200 share one die, clocks and software stack, so they share the
compute efficiencies, the step overhead and the all-reduce latency):

* ``compute_efficiency``  matmuls, achieved / peak bf16 FLOP/s
* ``attention_efficiency`` attention kernels, achieved / peak
* ``step_overhead_s``      fixed time per engine step
* ``request_overhead_s``   engine CPU time per request admitted (only with
  ``--request-overhead``; else 0: fig. 2's held-out points B1, B4-B6 do not support one)
* ``h200_bandwidth``       H200 HBM bandwidth efficiency (H100's is fixed at 0.8, the
  prior for decode kernels: three decode points cannot separate four parameters)
* ``allreduce_latency_s``  fixed cost of one all-reduce (tensor parallelism)
* ``dram_read_gbs``, ``dram_latency_s``  the host DRAM tier's read link
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

from pytest_ctxplat.sim.fidelity import (
    FidelityPoint,
    format_table,
    load_points,
    run_points,
    simulate_point,
)
from pytest_ctxplat.sim.hardware import HardwareProfile

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("compute_efficiency", "attention_efficiency", "step_overhead_s",
         "request_overhead_s", "h200_bandwidth", "allreduce_latency_s", "dram_read_gbs",
         "dram_latency_s")
START = np.array([0.7, 0.6, 0.0015, 0.0005, 0.75, 2.0e-5, 45.0, 0.003])
LOW = np.array([0.3, 0.2, 0.0, 0.0, 0.3, 0.0, 10.0, 0.0])
HIGH = np.array([1.0, 1.0, 0.01, 0.01, 1.0, 2.0e-4, 64.0, 0.05])
assert START[NAMES.index("request_overhead_s")] > 0  # x_scale needs a nonzero start
H100_BANDWIDTH = 0.8


def tweak(x: np.ndarray, free: np.ndarray | None = None) -> object:
    """A profile change applying parameter vector ``x`` (of the ``free`` parameters;
    the others keep START, request_overhead_s 0)."""
    full = START.copy()
    full[NAMES.index("request_overhead_s")] = 0.0
    mask = np.ones(len(NAMES), bool) if free is None else free
    full[mask] = x
    v = dict(zip(NAMES, (float(t) for t in full), strict=True))

    def apply(profile: HardwareProfile) -> HardwareProfile:
        a = profile.accelerator
        bw = v["h200_bandwidth"] if a.key == "h200" else H100_BANDWIDTH
        accel = dataclasses.replace(
            a, compute_efficiency=v["compute_efficiency"],
            attention_efficiency=v["attention_efficiency"], bandwidth_efficiency=bw,
            step_overhead_s=v["step_overhead_s"], request_overhead_s=v["request_overhead_s"],
            allreduce_latency_s=v["allreduce_latency_s"])
        scale = profile.tp  # one host link per GPU: the tier gives the aggregate
        tiers = tuple(dataclasses.replace(t, read_gbs=v["dram_read_gbs"] * scale,
                                          latency_s=v["dram_latency_s"])
                      if t.name == "dram" else t for t in profile.tiers)
        return profile.replace(accelerator=accel, tiers=tiers)

    return apply


def residuals(x: np.ndarray, points: list[FidelityPoint], free: np.ndarray) -> np.ndarray:
    change = tweak(x, free)
    return np.array([math.log(simulate_point(p, change) / p.published)  # type: ignore[arg-type]
                     for p in points])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default=str(ROOT / "benchmarks" / "fidelity_points.yaml"))
    ap.add_argument("--request-overhead", action="store_true",
                    help="fit request_overhead_s too (else it stays 0)")
    args = ap.parse_args(argv)
    points = load_points(args.points)
    fit = [p for p in points if p.fitted]
    free = np.array([args.request_overhead or n != "request_overhead_s" for n in NAMES])
    res = least_squares(residuals, START[free], bounds=(LOW[free], HIGH[free]),
                        args=(fit, free), x_scale=np.abs(START[free]), diff_step=1e-3)
    print(f"fitted on {len(fit)} of {len(points)} points; cost {res.cost:.5f}")
    for name, value in zip(np.array(NAMES)[free], res.x, strict=True):
        print(f"  {name:<22} {value:.4g}")
    print(format_table(run_points(points, tweak(res.x, free))))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
