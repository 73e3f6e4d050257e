"""The driver's own limits: TTFT error with 1,000 streams in flight, memory of 10,000
sessions idling in think time, and the cost of the measurement itself.

    .venv/bin/python benchmarks/bench_driver_limits.py

1. TTFT error at 1,000 concurrent streams: nginx holds each first byte for ``--delay-s``
   (2 s); requests arrive as a Poisson process at 1,000 / delay per second, so about
   1,000 are in flight, at most 1,000 (``driver.multiproc.run_streams``, one process,
   uvloop). Error = measured TTFT - delay; p50, p99, max; peak streams in flight.
2. 10,000 idle sessions: the real ``Runner`` + ``StreamClient`` path (``chat`` workload,
   10,000 users, one request each spread over the first seconds, then a think time
   longer than the run): resident memory of the process while all of them wait.
3. Measurement cost: building ``RunResult`` statistics from 100,000 records (what
   ``build_result`` does at the end of a run), per record.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_clients import REQUEST_BODY, _pct  # noqa: E402
from bench_endpoint import NginxEndpoint  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def ttft_at(streams: int, delay_s: float, requests: int) -> dict[str, float]:
    from pytest_ctxplat.driver.multiproc import run_streams

    with NginxEndpoint(delay_s=delay_s) as ep:
        res = run_streams(ep.delay_url, "/v1/completions", REQUEST_BODY, requests=requests,
                          concurrency=streams, rate=streams / delay_s, seed=1)
    errs = [(r.ttft_s - delay_s) * 1e3 for r in res.records if r.ttft_s is not None]
    edges = sorted([(r.start_s, 1) for r in res.records]
                   + [(r.end_s, -1) for r in res.records if r.end_s is not None])
    peak = cur = 0
    for _, step in edges:
        cur += step
        peak = max(peak, cur)
    return {"requests": len(res.records), "errors": res.errors, "p50_ms": _pct(errs, 0.5),
            "p99_ms": _pct(errs, 0.99), "max_ms": max(errs), "peak_in_flight": peak,
            "cpu_s": res.cpu_s, "wall_s": res.wall_s}


def idle_sessions(users: int, spread_s: float, hold_s: float) -> dict[str, float]:
    from pytest_ctxplat.api import run_fast
    from pytest_ctxplat.driver.http import ClientLimits, StreamClient
    from pytest_ctxplat.driver.runner import Runner, RunOptions
    from pytest_ctxplat.workload import load_workload

    spec = load_workload("chat", {"users": users, "turns": 2, "think_time_s": 3600.0,
                                  "start_spread_s": spread_s, "system_prompt_tokens": 256,
                                  "user_tokens": 64, "output_tokens": 64,
                                  "duration_s": spread_s + hold_s})
    before = rss_mb()
    figures: dict[str, float] = {"rss_before_mb": before}

    async def main(url: str) -> None:
        async with StreamClient(url, limits=ClientLimits(max_connections=256)) as client:
            runner = Runner(spec, client, RunOptions(model="bench"))
            task = asyncio.create_task(runner.run())
            await asyncio.sleep(spread_s + hold_s * 0.5)
            figures["requests_done"] = sum(1 for r in runner.records if r.end_s is not None)
            figures["errors"] = sum(1 for r in runner.records if r.error is not None)
            figures["in_flight"] = runner.in_flight
            figures["tasks"] = len(asyncio.all_tasks())
            figures["rss_idle_mb"] = rss_mb()
            runner.stop()
            await task

    with NginxEndpoint() as ep:
        run_fast(main(ep.url))
    figures["rss_after_mb"] = rss_mb()
    return figures


def measurement_cost(n: int) -> dict[str, float]:
    from pytest_ctxplat.report import stats
    from pytest_ctxplat.report.records import RequestRecord

    records = []
    for i in range(n):
        rec = RequestRecord(session_id=f"s{i % 1000}", user=i % 1000, index=i // 1000,
                            prompt_tokens=1000, max_tokens=64, designed_cached_tokens=512)
        rec.start_s = i * 0.001
        rec.ttft_s = 0.05 + (i % 97) * 0.001
        rec.end_s = rec.start_s + 0.5
        rec.output_tokens = 64
        rec.cached_tokens = 512
        rec.usage_prompt_tokens = 1000
        rec.chunk_gaps_s.frombytes(bytes(8 * 63))
        records.append(rec)
    t0 = time.process_time()
    stats.summarize(records, n * 0.001)
    stats.hit_rates(records, None)
    cpu = time.process_time() - t0
    return {"records": n, "cpu_s": cpu, "us_per_record": cpu / n * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--delay-s", type=float, default=2.0)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--spread-s", type=float, default=10.0)
    parser.add_argument("--hold-s", type=float, default=6.0)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--only", choices=["ttft", "idle", "cost"])
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}", flush=True)
    if args.only in (None, "ttft"):
        t = ttft_at(args.streams, args.delay_s, args.requests)
        print(f"TTFT error at {args.streams} streams ({args.delay_s:g} s injected delay, "
              f"{t['requests']:.0f} requests, peak {t['peak_in_flight']:.0f} in flight, "
              f"{t['errors']:.0f} errors): p50 {t['p50_ms']:.2f} ms, p99 {t['p99_ms']:.2f} ms,"
              f" max {t['max_ms']:.2f} ms; client CPU {t['cpu_s']:.1f} s in {t['wall_s']:.1f} s",
              flush=True)
    if args.only in (None, "idle"):
        m = idle_sessions(args.users, args.spread_s, args.hold_s)
        print(f"{args.users} sessions in think time (Runner + StreamClient, "
              f"{m['requests_done']:.0f} requests done, {m['errors']:.0f} errors, "
              f"{m['in_flight']:.0f} in flight, {m['tasks']:.0f} tasks): RSS "
              f"{m['rss_idle_mb']:.0f} MB (before the run {m['rss_before_mb']:.0f} MB, "
              f"+{m['rss_idle_mb'] - m['rss_before_mb']:.0f} MB)", flush=True)
    if args.only in (None, "cost"):
        c = measurement_cost(args.records)
        print(f"statistics over {c['records']:.0f} records: {c['cpu_s']:.2f} CPU s, "
              f"{c['us_per_record']:.1f} us per record", flush=True)
    print(f"load {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
