"""The driver's client over TLS: the own transport against aiohttp, and against plain http.

    .venv/bin/python benchmarks/bench_tls.py [--requests 5000] [--concurrency 256] [--rounds 3]

nginx (``bench_endpoint.NginxEndpoint(tls=True)``) answers the fixed 64-token SSE body
on a plain and a TLS port (a certificate for 127.0.0.1 from a test authority, trusted
through ``SSL_CERT_FILE``). In this process, round by round, ``StreamClient`` streams
``--requests`` requests at ``--concurrency`` (closed loop, keep-alive connections, every
answer read and recorded as in a test) with each setting: the own transport over http,
the own transport over https, aiohttp over https. Printed: medians of requests/s and of
client CPU per request (``time.process_time``), and each https setting against the own
transport's over the same https port. One process runs every setting, so a slower or
busier machine shifts them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_endpoint import NginxEndpoint  # noqa: E402

BODY = b'{"model":"bench","prompt":[1,2,3],"max_tokens":64,"stream":true}'


async def _stream(url: str, transport: str, n: int, concurrency: int) -> tuple[float, float]:
    """(requests/s, client CPU ms per request) of ``n`` streamed requests."""
    from pytest_ctxplat.driver.http import ClientLimits, StreamClient
    from pytest_ctxplat.report.records import RequestRecord

    loop = asyncio.get_running_loop()
    left = n
    failed: list[str] = []
    async with StreamClient(url, limits=ClientLimits(max_connections=concurrency),
                            transport=transport) as client:
        async def slot() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                rec = RequestRecord(session_id="s", user=0, index=0, prompt_tokens=3,
                                    max_tokens=64)
                await client.stream("/v1/completions", BODY, rec, loop.time)
                if not rec.ok:
                    failed.append(rec.error or rec.outcome or "?")

        await asyncio.gather(*(slot() for _ in range(concurrency)))  # connect, warm up
        left = n
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(slot() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if failed:
        raise SystemExit(f"{transport} {url}: {len(failed)} failed, first: {failed[0]}")
    return n / wall, 1000 * cpu / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=5_000)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with NginxEndpoint(log=False, tls=True) as ep:
        os.environ["SSL_CERT_FILE"] = str(ep.ca_file)  # before aiohttp loads its context
        from pytest_ctxplat.driver.multiproc import new_event_loop

        settings = {"own, http": (ep.url, "h1"), "own, https": (ep.tls_url, "h1"),
                    "aiohttp, https": (ep.tls_url, "aiohttp")}
        figures: dict[str, list[tuple[float, float]]] = {k: [] for k in settings}
        load = os.getloadavg()[0]
        loop = new_event_loop()
        try:
            for _ in range(args.rounds):
                for name, (url, transport) in settings.items():
                    figures[name].append(loop.run_until_complete(
                        _stream(url, transport, args.requests, args.concurrency)))
        finally:
            loop.close()
    print(f"{args.requests} requests x {args.rounds} rounds, {args.concurrency} streams, "
          f"nginx fixed SSE body (13 KB); {os.cpu_count()} CPUs, load {load:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after")
    print(f"{'client':<16} {'req/s':>8} {'CPU ms/req':>11}  {'req/s vs own https':>18}")
    own = statistics.median(r for r, _ in figures["own, https"])
    for name, runs in figures.items():
        rate = statistics.median(r for r, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"{name:<16} {rate:>8,.0f} {cpu:>11.3f}  {rate / own:>18.2f}")


if __name__ == "__main__":
    main()
