"""Closed- and open-loop loads over one or several worker processes (driver.multiproc)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

import orjson
import pytest
from aiohttp import web

from pytest_ctxplat.driver.multiproc import new_event_loop, run_streams, split_evenly, wait_until
from pytest_ctxplat.errors import ConfigError

N_TOKENS = 4
BODY = orjson.dumps({"model": "m", "prompt": [1, 2], "max_tokens": N_TOKENS, "stream": True})


class Server:
    """An aiohttp server in its own thread that counts requests in flight and
    connections; every answer waits ``delay_s`` before its first byte."""

    def __init__(self, delay_s: float = 0.02) -> None:
        self.delay_s = delay_s
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests = 0
        self.peers: set[tuple[str, int]] = set()
        self.url = ""

    async def handler(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.peers.add(peer[:2])
        try:
            await request.read()
            await asyncio.sleep(self.delay_s)
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            events = [
                {"id": "c", "choices": [{"index": 0, "text": f" t{i}", "finish_reason": None}]}
                for i in range(N_TOKENS)
            ]
            body = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
            await resp.write(body + b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        finally:
            self.in_flight -= 1


@contextlib.contextmanager
def serving(delay_s: float = 0.02) -> Iterator[Server]:
    server = Server(delay_s)
    ready = threading.Event()
    stop: list[asyncio.Event] = []
    loop = asyncio.new_event_loop()

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/completions", server.handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        server.url = f"http://{host}:{port}"
        stop.append(asyncio.Event())
        ready.set()
        await stop[0].wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(10)
        loop.close()


def test_one_process_holds_exactly_the_concurrency_and_reuses_connections() -> None:
    with serving(delay_s=0.03) as server:
        res = run_streams(server.url, "/v1/completions", BODY, requests=60, concurrency=12)
    assert len(res.records) == 60 and res.errors == 0
    assert all(r.output_tokens == N_TOKENS and r.ttft_s is not None for r in res.records)
    assert server.max_in_flight == 12
    assert len(server.peers) == 12  # one connection per stream, reused
    assert res.records == sorted(res.records, key=lambda r: r.start_s)
    assert res.records[0].start_s >= 0
    assert res.requests_per_s > 0 and res.cpu_s > 0


def test_two_workers_share_the_load_and_merge_records() -> None:
    with serving(delay_s=0.02) as server:
        res = run_streams(server.url, "/v1/completions", BODY, requests=41, concurrency=6,
                          workers=2, timeout_s=60)
    assert len(res.records) == 41 and res.errors == 0
    assert sorted(len(w.records) for w in res.workers) == [20, 21]
    assert server.requests == 41
    assert server.max_in_flight <= 6
    assert len({r.session_id[:2] for r in res.records}) == 2  # w0..., w1...
    # One clock for both: every start lies after the common start line and near it.
    starts = [r.start_s for r in res.records]
    assert min(starts) >= 0 and min(starts) < 1.0
    ends = [r.end_s for r in res.records if r.end_s is not None]
    assert max(ends) <= res.wall_s + 0.5


def test_open_loop_rate_spreads_the_arrivals() -> None:
    with serving(delay_s=0.005) as server:
        res = run_streams(server.url, "/v1/completions", BODY, requests=30, concurrency=30,
                          rate=100.0, seed=3)
    assert res.errors == 0 and len(res.records) == 30
    starts = sorted(r.start_s for r in res.records)
    # 30 Poisson arrivals at 100/s take about 0.3 s, not one instant.
    assert 0.1 < starts[-1] - starts[0] < 2.0


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"requests": 0}, "requests"),
        ({"concurrency": 0}, "concurrency"),
        ({"workers": 0}, "workers"),
        ({"workers": 5, "concurrency": 4}, "workers"),
        ({"rate": 0.0}, "rate"),
        ({"rate": float("inf")}, "rate"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], word: str) -> None:
    args: dict[str, object] = {"requests": 10, "concurrency": 4, **kwargs}
    with pytest.raises(ConfigError, match=word):
        run_streams("http://127.0.0.1:9", "/v1/completions", BODY, **args)  # type: ignore[arg-type]


def test_split_evenly() -> None:
    assert split_evenly(10, 3) == [4, 3, 3]
    assert split_evenly(2, 2) == [1, 1]
    assert sum(split_evenly(12345, 7)) == 12345


def test_event_loop_clock_has_sub_millisecond_resolution() -> None:
    loop = new_event_loop()
    try:
        readings = {loop.time() for _ in range(2000)}
        t0 = time.monotonic()
        assert abs(loop.time() - t0) < 0.01  # the monotonic clock
        assert len(readings) > 5  # not frozen, not in whole milliseconds
        assert any(abs(r * 1000 - round(r * 1000)) > 1e-6 for r in readings)
        assert loop.run_until_complete(asyncio.sleep(0.01, result=7)) == 7
    finally:
        loop.close()


def test_start_line_is_never_crossed_early() -> None:
    """The workers' start barrier: on the loop they run (uvloop's timers count whole
    milliseconds from a cached clock and may fire early), ``wait_until(t)`` returns
    only once the monotonic clock has reached ``t``."""
    loop = new_event_loop()

    async def early_wakeups() -> list[float]:
        early = []
        for i in range(200):
            t = time.monotonic() + 0.0005 + (i % 9) * 0.0011
            await wait_until(t)
            if time.monotonic() < t:
                early.append(t - time.monotonic())
        await wait_until(time.monotonic() - 1.0)  # a line in the past: at once
        return early

    try:
        assert loop.run_until_complete(early_wakeups()) == []
    finally:
        loop.close()


def test_tuned_gc_pauses_the_collector_and_restores_it() -> None:
    import gc

    from pytest_ctxplat.driver.multiproc import tuned_gc

    assert gc.isenabled()
    with tuned_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), tuned_gc():
        raise RuntimeError("boom")
    assert gc.isenabled()
    gc.disable()
    try:
        with tuned_gc():
            pass
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()


def test_a_stopped_runs_orphaned_body_writer_is_quiet_and_other_orphans_are_not(
        caplog: pytest.LogCaptureFixture) -> None:
    # A run stopped mid-request closes aiohttp's connection under its body-writer task;
    # that task's AssertionError must not print a traceback into an interrupted run's
    # output. Any other task's unretrieved exception is still reported.
    import asyncio
    import gc

    from pytest_ctxplat.driver.multiproc import new_event_loop

    ns: dict[str, object] = {}
    exec(compile("async def write_bytes():\n    raise AssertionError\n",
                 "/venv/site-packages/aiohttp/client_reqrep.py", "exec"), ns)

    async def unrelated() -> None:
        raise AssertionError("a real bug")

    async def main() -> None:
        tasks = [asyncio.ensure_future(ns["write_bytes"]()),  # type: ignore[operator]
                 asyncio.ensure_future(unrelated())]
        await asyncio.sleep(0.01)
        tasks.clear()  # unretrieved and unreferenced: reported when collected

    loop = new_event_loop()
    with caplog.at_level("ERROR", logger="asyncio"):
        loop.run_until_complete(main())
        loop.close()
        gc.collect()
    text = caplog.text
    assert "a real bug" in text
    assert "write_bytes" not in text
