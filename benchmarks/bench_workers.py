"""``workers=N`` through the full path: one workload split across worker processes.

    .venv/bin/python benchmarks/bench_workers.py [--requests 20000] [--concurrency 256]

Each run plays the same workload (``chat``, one-turn sessions back to back, 128-token
prompts: 64 shared + 64 own, 64 output tokens; ``concurrency`` users, ``requests`` in
all) with ``run_workload(..., workers=N)`` against nginx serving a fixed SSE body
(``bench_endpoint.NginxEndpoint``): the whole path a test takes (target preparation,
plans, token ids, bodies, records, designed-hit accounting, the merge of the workers'
results and the verdict; the workers draw the run's requests from one shared pool).
Requests/s is the merged result's requests over the span from the first request's start
to the last one's end (one clock: the workers start at one wall-clock line and their
records are placed on it). Each setting is run ``--repeats``
times; the table shows the median, and the machine's load average before each run
(this measures the client: on a busy machine a second process gains less).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_endpoint import N_CHUNKS, NginxEndpoint  # noqa: E402


def one_run(url: str, requests: int, concurrency: int, workers: int) -> float:
    """Requests/s of one ``run_workload`` with ``workers`` processes."""
    from pytest_ctxplat.api import run_workload
    from pytest_ctxplat.workload import load_workload

    spec = load_workload("chat", {
        "users": concurrency, "turns": 1, "think_time_s": 0.0, "start_spread_s": 0.0,
        "system_prompt_tokens": 64, "user_tokens": 64, "block_size": 64,
        "output_tokens": N_CHUNKS, "max_requests": requests, "recycle": True})
    result = run_workload(url, spec, name="bench-workers", workers=workers,
                          reset_cache=False, scrape_every_s=3600.0)
    recs = [r for r in result.records if r.ok]
    if len(recs) != requests:
        raise SystemExit(f"workers={workers}: {len(recs)} of {requests} requests ok; "
                         f"first errors: {list(result.errors_sample)[:2]}")
    span = max(r.end_s or 0.0 for r in recs) - min(r.start_s for r in recs)
    return len(recs) / span


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    endpoint = NginxEndpoint(log=False)  # rates come from the records: no log writes
    endpoint.start()
    rates: dict[int, list[float]] = {w: [] for w in counts}
    loads: list[float] = []
    try:
        for _ in range(args.repeats):
            for w in counts:  # interleaved: a load change hits every setting alike
                loads.append(os.getloadavg()[0])
                rates[w].append(one_run(endpoint.url, args.requests, args.concurrency, w))
                time.sleep(1.0)
    finally:
        endpoint.stop()
    base = statistics.median(rates[counts[0]])
    print(f"full path (run_workload, chat completions), {args.concurrency} users, "
          f"{args.requests} requests, nginx fixed SSE body, {os.cpu_count()} CPUs, "
          f"load average before runs {min(loads):.2f}..{max(loads):.2f}")
    print(f"{'workers':>7}  {'req/s (median)':>14}  {'runs':<30}  {'x one':>6}")
    for w in counts:
        med = statistics.median(rates[w])
        runs = ", ".join(f"{r:.0f}" for r in rates[w])
        print(f"{w:>7}  {med:>14.0f}  {runs:<30}  {med / base:>6.2f}")


if __name__ == "__main__":
    main()
