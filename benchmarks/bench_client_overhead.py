"""How much the driver's streaming client costs, against a minimal aiohttp ceiling.

Starts an aiohttp.web server in a subprocess that answers every POST with one fixed
``text/event-stream`` body (64 completion chunks, a usage chunk, ``[DONE]``), then sends
``--requests`` requests at ``--concurrency`` through

- ``StreamClient`` (the driver's client: SSE splitting, JSON parsing of every chunk,
  a filled ``RequestRecord``), and
- a minimal raw aiohttp client (split each buffer on blank lines, note the first event
  and ``[DONE]``, nothing else): the ceiling for this HTTP stack,

in the same process, alternating, and prints requests/s, client CPU seconds per 1,000
requests (``time.process_time`` of this process; the server runs in another) and errors.
The server is Python too and shares the machine, so it can be the bottleneck; the CPU
column is the fairer comparison of client cost.

    python benchmarks/bench_client_overhead.py --requests 3000 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

N_CHUNKS = 64
PROMPT_TOKENS = 128
CACHED_TOKENS = 96


def sse_body() -> bytes:
    """The fixed answer: what vLLM sends for a 64-token streamed completion with usage."""
    events = []
    for i in range(N_CHUNKS):
        chunk = {
            "id": "cmpl-bench",
            "object": "text_completion",
            "created": 1700000000,
            "model": "bench",
            "choices": [
                {
                    "index": 0,
                    "text": f" tok{i}",
                    "logprobs": None,
                    "finish_reason": "length" if i == N_CHUNKS - 1 else None,
                    "stop_reason": None,
                }
            ],
            "usage": None,
        }
        events.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
    usage = {
        "id": "cmpl-bench",
        "object": "text_completion",
        "created": 1700000000,
        "model": "bench",
        "choices": [],
        "usage": {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": N_CHUNKS,
            "total_tokens": PROMPT_TOKENS + N_CHUNKS,
            "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS},
        },
    }
    events.append(b"data: " + orjson.dumps(usage) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


REQUEST_BODY = orjson.dumps(
    {
        "model": "bench",
        "prompt": list(range(PROMPT_TOKENS)),
        "max_tokens": N_CHUNKS,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
)


# -- the server (runs in a subprocess) --------------------------------------------------


def serve() -> None:
    from aiohttp import web

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    body = sse_body()

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="text/event-stream")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/completions", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# -- the clients -------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    requests: int
    seconds: float
    cpu_s: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_per_1k(self) -> float:
        return self.cpu_s / self.requests * 1000


async def _drive(n: int, concurrency: int, one: Callable[[int], Awaitable[bool]]) -> int:
    """Run ``n`` calls of ``one`` with ``concurrency`` workers; return the failures."""
    next_i = 0
    errors = 0

    async def worker() -> None:
        nonlocal next_i, errors
        while next_i < n:
            i = next_i
            next_i += 1
            if not await one(i):
                errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return errors


async def run_ours(url: str, n: int, concurrency: int, warmup: int) -> Result:
    from pytest_ctxplat.driver.http import ClientLimits, StreamClient
    from pytest_ctxplat.report.records import RequestRecord

    now = asyncio.get_running_loop().time
    async with StreamClient(url, limits=ClientLimits(max_connections=concurrency)) as client:

        async def one(i: int) -> bool:
            rec = RequestRecord(
                session_id="b", user=0, index=i, prompt_tokens=PROMPT_TOKENS, max_tokens=N_CHUNKS
            )
            await client.stream("/v1/completions", REQUEST_BODY, rec, now)
            return (
                rec.error is None
                and rec.output_tokens == N_CHUNKS
                and rec.cached_tokens == CACHED_TOKENS
            )

        await _drive(warmup, concurrency, one)
        t0, c0 = time.perf_counter(), time.process_time()
        errors = await _drive(n, concurrency, one)
        t1, c1 = time.perf_counter(), time.process_time()
    return Result("StreamClient", n, t1 - t0, c1 - c0, errors)


async def run_ceiling(url: str, n: int, concurrency: int, warmup: int) -> Result:
    import aiohttp

    now = asyncio.get_running_loop().time
    connector = aiohttp.TCPConnector(limit=concurrency)
    target = url + "/v1/completions"
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

        async def one(i: int) -> bool:
            start = now()
            first = 0.0
            events = 0
            done = False
            rest = b""
            async with session.post(target, data=REQUEST_BODY, headers=headers) as resp:
                if resp.status != 200:
                    return False
                async for data in resp.content.iter_any():
                    parts = (rest + data).split(b"\n\n")
                    rest = parts.pop()
                    for part in parts:
                        if part == b"data: [DONE]":
                            done = True
                        elif not events:
                            first = now() - start
                        events += 1
            return done and events == N_CHUNKS + 2 and first >= 0.0

        await _drive(warmup, concurrency, one)
        t0, c0 = time.perf_counter(), time.process_time()
        errors = await _drive(n, concurrency, one)
        t1, c1 = time.perf_counter(), time.process_time()
    return Result("raw aiohttp (ceiling)", n, t1 - t0, c1 - c0, errors)


def _table(best: dict[str, Result]) -> str:
    ours, ceil = best["StreamClient"], best["raw aiohttp (ceiling)"]
    rows = [
        ("client", "req/s", "CPU s / 1k req", "errors"),
        *((r.name, f"{r.rps:,.0f}", f"{r.cpu_per_1k:.3f}", str(r.errors)) for r in (ours, ceil)),
        (
            "ratio ours/ceiling",
            f"{ours.rps / ceil.rps:.2f}",
            f"{ours.cpu_per_1k / ceil.cpu_per_1k:.2f}",
            "",
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for j, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [row[i].rjust(widths[i]) for i in range(1, 4)]
        lines.append("  ".join(cells))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; best kept")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--uvloop", action="store_true", help="run the clients on uvloop")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    sys.path.insert(0, str(root))
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        url = f"http://127.0.0.1:{port}"
        if args.uvloop:
            import uvloop

            uvloop.install()
        best: dict[str, Result] = {}
        print(
            f"{args.requests} requests x {N_CHUNKS} chunks, concurrency {args.concurrency}, "
            f"{args.rounds} rounds, {os.cpu_count()} CPUs, "
            f"client loop {'uvloop' if args.uvloop else 'asyncio'}"
        )
        for rnd in range(args.rounds):
            for runner in (run_ceiling, run_ours):
                res = asyncio.run(runner(url, args.requests, args.concurrency, args.warmup))
                print(
                    f"  round {rnd + 1}: {res.name:<22} {res.rps:8,.0f} req/s  "
                    f"{res.cpu_per_1k:.3f} CPU s/1k  errors {res.errors}"
                )
                if res.name not in best or res.rps > best[res.name].rps:
                    best[res.name] = res
        print()
        print(_table(best))
    finally:
        server.terminate()
        server.wait(5)


if __name__ == "__main__":
    main()
