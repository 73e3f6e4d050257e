"""Timing over HTTP: how far the client's figures stray from the simulator's model time,
per speed-up.

For each speed-up, starts ``ctxplat serve-sim`` (a child process, profile
``h100-llama8b`` unless ``--profile``), plays one small chat workload against it over
HTTP (the same workload and seed every time; times in model time) and prints, per
request, the client's TTFT minus the server's model-time TTFT (``usage.
ctxplat_model_ttft_ms``): p50, p95, p95 relative to the model TTFT, the inter-token gaps
the client saw (p50, p99) against the model's decode step, and whether the default
validity bound holds. The table in docs/concepts/simulator.md ("Timing over HTTP") comes
from it. Run: ``.venv/bin/python benchmarks/bench_sim_timing.py [--speedups 1,2,5]``.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np

from pytest_ctxplat.api import run_workload
from pytest_ctxplat.report.timing import DEFAULT_SKEW_MAX_MS, DEFAULT_SKEW_MAX_RATIO
from pytest_ctxplat.servers.sim import start_sim
from pytest_ctxplat.workload.chat import ChatSessions


def workload(users: int, turns: int) -> ChatSessions:
    """A few chat users: 1k shared prompt, 128-token turns, 32 output tokens."""
    return ChatSessions(users=users, turns=turns, think_time_s=0.5, system_prompt_tokens=1024,
                        user_tokens=128, output_tokens=32, start_spread_s=0.5)


def measure(speedup: float, profile: str, users: int, turns: int) -> dict[str, Any]:
    sim = start_sim({"speedup": speedup, "profile": profile})
    try:
        t0 = time.perf_counter()
        result = run_workload(sim, workload(users, turns), name=f"speedup-{speedup:g}")
        wall = time.perf_counter() - t0
    finally:
        sim.close()
    timing = result.timing or {}
    ok = [r for r in result.records if r.ok and r.model_e2e_s is not None]
    gaps = np.concatenate([np.frombuffer(r.chunk_gaps_s, dtype=np.float64) for r in ok]) \
        * 1000.0
    steps = [(r.model_e2e_s - r.model_ttft_s) / (r.output_tokens - 1) * 1000.0 for r in ok
             if r.model_ttft_s is not None and r.output_tokens > 1]
    skew = timing.get("ttft_skew_ms", {})
    return {
        "speedup": speedup,
        "requests": len(ok),
        "wall_s": wall,
        "model_ttft_p50": timing.get("model_ttft_ms", {}).get("p50"),
        "client_ttft_p50": result.observed.get("ttft_ms.p50"),
        "skew_p50": skew.get("p50"),
        "skew_p95": skew.get("p95"),
        "rel_p95": timing.get("relative_ttft_skew_p95"),
        "e2e_skew_p95": timing.get("e2e_skew_ms", {}).get("p95"),
        "itl_p50": float(np.percentile(gaps, 50)) if gaps.size else None,
        "itl_p99": float(np.percentile(gaps, 99)) if gaps.size else None,
        "model_step": float(np.median(steps)) if steps else None,
        "valid": timing.get("valid"),
    }


def _f(v: Any, fmt: str = ".1f") -> str:
    return "n/a" if v is None else format(v, fmt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speedups", default="1,2,5,10,20,50")
    ap.add_argument("--profile", default="h100-llama8b")
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--turns", type=int, default=6)
    args = ap.parse_args()
    print(f"profile {args.profile}, chat {args.users} users x {args.turns} turns, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; bound "
          f"{DEFAULT_SKEW_MAX_MS:g} ms and {DEFAULT_SKEW_MAX_RATIO:.0%}")
    print("| speed-up | requests | wall s | model TTFT p50 ms | client TTFT p50 ms "
          "| skew p50 ms | skew p95 ms | skew p95 / model | e2e skew p95 ms "
          "| ITL p50 / p99 ms (model step) | valid |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in (float(x) for x in args.speedups.split(",")):
        m = measure(s, args.profile, args.users, args.turns)
        print(f"| {s:g} | {m['requests']} | {m['wall_s']:.1f} | {_f(m['model_ttft_p50'])} "
              f"| {_f(m['client_ttft_p50'])} | {_f(m['skew_p50'])} | {_f(m['skew_p95'])} "
              f"| {_f(m['rel_p95'], '.2f')} | {_f(m['e2e_skew_p95'])} "
              f"| {_f(m['itl_p50'], '.2f')} / {_f(m['itl_p99'], '.1f')} "
              f"({_f(m['model_step'], '.2f')}) | {m['valid']} |", flush=True)


if __name__ == "__main__":
    main()
