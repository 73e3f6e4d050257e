"""Where a client's time goes: one contender of ``bench_clients.py`` under cProfile.

    .venv/bin/python benchmarks/profile_clients.py --client runner [--requests 5000]
        [--concurrency 256] [--top 25] [--sort tottime|cumtime] [--out FILE.prof]

Starts the benchmark's nginx endpoint (fixed SSE body), runs the contender in this
process (``ours``: ``run_streams`` with one worker; ``runner`` / ``runner-chat``: the
``Runner`` path of a ``chat`` workload with ``/v1/completions`` or
``/v1/chat/completions`` bodies; ``ceiling``: the minimal aiohttp client), and prints
the functions with the most time, each with its share of the profiled total. cProfile
slows Python code several times more than C code, so shares are indicative: read them
beside the unprofiled CPU per request printed first (a separate, unprofiled run).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_clients  # noqa: E402
from bench_endpoint import NginxEndpoint  # noqa: E402


def run_client(kind: str, url: str, requests: int, concurrency: int) -> None:
    """One run of contender ``kind`` in this process."""
    if kind == "ours":
        from pytest_ctxplat.driver.multiproc import run_streams

        run_streams(url, "/v1/completions", bench_clients.REQUEST_BODY, requests=requests,
                    concurrency=concurrency, workers=1)
    elif kind in ("runner", "runner-chat"):
        out = bench_clients._runner(url, requests, concurrency, 0.0,
                                    "chat" if kind == "runner-chat" else "completions")
        if out["errors"]:
            raise SystemExit(f"{out['errors']} failed requests")
    else:
        from pytest_ctxplat.driver.multiproc import new_event_loop, tuned_gc

        loop = new_event_loop()
        with tuned_gc():
            loop.run_until_complete(bench_clients._ceiling(
                url + "/v1/completions", requests, concurrency, None))
        loop.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--client", choices=["ours", "runner", "runner-chat", "ceiling"],
                   default="runner")
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--sort", choices=["tottime", "cumtime"], default="tottime")
    p.add_argument("--out", help="also write the raw profile here (pstats format)")
    p.add_argument("--load", help="print the shares of a profile written by --out, and stop")
    args = p.parse_args()
    if args.load:
        print_profile(pstats.Stats(args.load), args.requests, args.top, args.sort)
        return
    with NginxEndpoint() as endpoint:
        run_client(args.client, endpoint.url, 500, args.concurrency)  # warm-up, imports
        cpu0, wall0 = time.process_time(), time.perf_counter()
        run_client(args.client, endpoint.url, args.requests, args.concurrency)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        print(f"{args.client}: {args.requests} requests at {args.concurrency} streams, "
              f"unprofiled: {args.requests / wall:,.0f} req/s, "
              f"{cpu / args.requests * 1e6:.0f} us CPU per request")
        prof = cProfile.Profile()
        prof.enable()
        run_client(args.client, endpoint.url, args.requests, args.concurrency)
        prof.disable()
    if args.out:
        prof.dump_stats(args.out)
    print_profile(pstats.Stats(prof), args.requests, args.top, args.sort)


AREAS = (  # (area, path fragments): the first that matches a function's file
    ("SSE reading (sse.py, StreamClient)", ("driver/sse.py", "driver/http.py",
                                            "driver/limits.py")),
    ("request bodies (tokens, render, body)", ("workload/tokens.py", "workload/render.py",
                                               "driver/body.py", "orjson.dumps")),
    ("plans and designed hits (workload)", ("pytest_ctxplat/workload/",)),
    ("runner and records", ("driver/runner.py", "report/records.py", "<string>")),
    ("client loops (benchmark, run_streams)", ("bench_clients.py", "driver/multiproc.py",
                                               "profile_clients.py")),
    ("aiohttp, asyncio, event loop", ("aiohttp", "asyncio", "yarl", "multidict",
                                      "aiohappyeyeballs", "runners.py", "socket", "uvloop",
                                      "selector", "events.py", "tasks.py", "base_events")),
)


def area_of(file: str, func: str) -> str:
    where = file if file != "~" else func
    for name, parts in AREAS:
        if any(p in where for p in parts):
            return name
    return "other"


def print_profile(stats: pstats.Stats, requests: int, top: int, sort: str) -> None:
    """Shares of the profiled total: by area, then the top functions."""
    total = stats.total_tt  # type: ignore[attr-defined]
    by_area: dict[str, float] = {}
    for (file, _, func), (_, _, tt, _, callers) in stats.stats.items():  # type: ignore[attr-defined]
        area = area_of(file, func)
        if area == "other" and callers:  # a builtin: its callers' areas
            spent = sum(c[2] for c in callers.values()) or 1.0
            for (cfile, _, cfunc), c in callers.items():
                carea = area_of(cfile, cfunc)
                by_area[carea] = by_area.get(carea, 0.0) + tt * c[2] / spent
            continue
        by_area[area] = by_area.get(area, 0.0) + tt
    print(f"profiled total {total:.2f} s; own time by area:")
    for area, tt in sorted(by_area.items(), key=lambda kv: -kv[1]):
        print(f"{tt / total:6.1%}  {area}")
    rows = []
    for (file, line, func), (_, calls, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(file).name}:{line}({func})" if line else func
        rows.append((tt if sort == "tottime" else ct, tt, ct, calls, where))
    rows.sort(reverse=True)
    print(f"({total / requests * 1e6:.0f} us per request under the profiler); top {top} "
          f"by {sort}:")
    print(f"{'share':>6} {'tottime':>8} {'cumtime':>8} {'calls':>9}  function")
    for _, tt, ct, calls, where in rows[:top]:
        print(f"{tt / total:6.1%} {tt:8.3f} {ct:8.3f} {calls:9d}  {where}")


if __name__ == "__main__":
    main()
