"""StreamClient against real aiohttp.web servers on 127.0.0.1, over both of its
transports (the own HTTP/1.1 one and aiohttp): every test runs once with each, and once
more with the own transport over TLS (the servers of ``serve`` then speak https, with a
certificate of a test authority that the client trusts through ``SSL_CERT_FILE``)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import orjson
import pytest
import trustme
from aiohttp import web

from pytest_ctxplat.driver.http import ClientLimits, StreamClient
from pytest_ctxplat.driver.sse import interpret_payload
from pytest_ctxplat.errors import ConfigError
from pytest_ctxplat.report.records import RequestRecord

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SECRET = "sk-test-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {SECRET}"}
BODY = orjson.dumps({"model": "m", "prompt": [1, 2, 3], "max_tokens": 8, "stream": True})


_SERVER_TLS: list[ssl.SSLContext] = []  # set: the servers of ``serve`` speak TLS


@pytest.fixture(scope="module")
def test_authority(tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[tuple[Path, ssl.SSLContext]]:
    """A certificate authority's bundle (for the client) and a server context with a
    certificate it issued for 127.0.0.1."""
    ca = trustme.CA()
    bundle = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    yield bundle, server


@pytest.fixture(autouse=True, params=["h1", "aiohttp", "h1-tls"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
              test_authority: tuple[Path, ssl.SSLContext]) -> Iterator[str]:
    """Every client made in a test uses this transport (and TLS, with ``h1-tls``)."""
    name = str(request.param)
    monkeypatch.setattr(StreamClient, "default_transport", name.removesuffix("-tls"))
    if name.endswith("-tls"):
        bundle, server = test_authority
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
        _SERVER_TLS.append(server)
    try:
        yield name
    finally:
        _SERVER_TLS.clear()


def _record(index: int = 0) -> RequestRecord:
    return RequestRecord(session_id="s", user=0, index=index, prompt_tokens=3, max_tokens=8)


def _token_event(i: int) -> bytes:
    chunk = {"id": "c", "choices": [{"index": 0, "text": f" t{i}", "finish_reason": None}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _usage_event(completion: int, prompt: int = 3, cached: int | None = 2) -> bytes:
    usage: dict[str, object] = {"prompt_tokens": prompt, "completion_tokens": completion}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return b"data: " + orjson.dumps({"id": "c", "choices": [], "usage": usage}) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def _sse_body(n_tokens: int, cached: int | None = 2) -> list[bytes]:
    return [
        *(_token_event(i) for i in range(n_tokens)),
        _usage_event(n_tokens, cached=cached),
        DONE,
    ]


async def _start_sse(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    return resp


@contextlib.asynccontextmanager
async def serve(routes: dict[str, Handler]) -> AsyncIterator[str]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    tls = _SERVER_TLS[0] if _SERVER_TLS else None
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"{'https' if tls else 'http'}://{host}:{port}"
    finally:
        await runner.cleanup()


def _now() -> Callable[[], float]:
    return asyncio.get_running_loop().time


# -- (a) a normal stream --------------------------------------------------------------


@pytest.mark.asyncio
async def test_normal_completions_stream() -> None:
    n = 10

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await _start_sse(request)
        for event in _sse_body(n, cached=2):
            await resp.write(event)
            await asyncio.sleep(0.002)
        await resp.write_eof()
        return resp

    async with serve({"/v1/completions": handler}) as url, StreamClient(url) as client:
        rec = _record()
        await client.stream("/v1/completions", BODY, rec, _now())
    assert rec.error is None, rec.error
    assert rec.ok
    assert rec.status == 200
    assert rec.ttft_s is not None and rec.ttft_s > 0
    assert len(rec.chunk_gaps_s) == n - 1
    assert all(g > 0 for g in rec.chunk_gaps_s)
    assert rec.output_tokens == n
    assert rec.cached_tokens == 2
    assert rec.usage_prompt_tokens == 3
    assert rec.end_s is not None and rec.end_s >= rec.start_s + rec.ttft_s
    assert rec.decode_tps is not None and rec.decode_tps > 0


@pytest.mark.asyncio
async def test_usage_wins_over_chunk_count_and_shares_a_chunk_with_choices() -> None:
    # Three chunks, but one carries two tokens; usage rides on the last token chunk.
    last = {
        "choices": [{"index": 0, "text": " end", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 4},
    }
    events = [_token_event(0), _token_event(1), b"data: " + orjson.dumps(last) + b"\n\n", DONE]

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await _start_sse(request)
        for event in events:
            await resp.write(event)
        await resp.write_eof()
        return resp

    async with serve({"/v1/completions": handler}) as url, StreamClient(url) as client:
        rec = _record()
        await client.stream("/v1/completions", BODY, rec, _now())
    assert rec.error is None
    assert rec.output_tokens == 4
    assert rec.usage_prompt_tokens == 7
    assert rec.cached_tokens is None
    assert len(rec.chunk_gaps_s) == 2


@pytest.mark.asyncio
async def test_chat_stream_without_usage_counts_chunks() -> None:
    def chat(delta: dict[str, object], finish: str | None = None) -> bytes:
        chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    events = [
        chat({"role": "assistant", "content": ""}),
        *(chat({"content": f"w{i}"}) for i in range(5)),
        chat({}, "stop"),
        DONE,
    ]

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await _start_sse(request)
        await resp.write(events[0])
        await asyncio.sleep(0.02)  # the role chunk comes early; it is not the first token
        for event in events[1:]:
            await resp.write(event)
        await resp.write_eof()
        return resp

    async with serve({"/v1/chat/completions": handler}) as url, StreamClient(url) as client:
        rec = _record()
        await client.stream("/v1/chat/completions", BODY, rec, _now())
    assert rec.error is None
    assert rec.output_tokens == 5
    assert rec.cached_tokens is None and rec.usage_prompt_tokens is None
    assert rec.ttft_s is not None and rec.ttft_s >= 0.02


# -- (b) tiny pieces, many requests ------------------------------------------------------


@pytest.mark.asyncio
async def test_tiny_pieces_under_concurrency() -> None:
    n_tokens = 5

    async def handler(request: web.Request) -> web.StreamResponse:
        rnd = random.Random(int(request.headers["X-Seed"]))
        events = _sse_body(n_tokens, cached=1)
        resp = await _start_sse(request)
        i = 0
        while i < len(events):
            if rnd.random() < 0.2 and i + 1 < len(events):
                await resp.write(events[i] + events[i + 1])  # two events in one write
                i += 2
                continue
            data = events[i]
            pos = 0
            while pos < len(data):
                step = rnd.randint(1, 3)
                await resp.write(data[pos : pos + step])
                pos += step
                if rnd.random() < 0.05:
                    await asyncio.sleep(0.001)
                else:
                    await asyncio.sleep(0)
            i += 1
        await resp.write_eof()
        return resp

    n_requests, concurrency = 200, 32
    records = [_record(i) for i in range(n_requests)]
    async with serve({"/v1/completions": handler}) as url:
        clients = [StreamClient(url, headers={"X-Seed": str(seed)}) for seed in range(4)]
        for c in clients:
            await c.open()
        sem = asyncio.Semaphore(concurrency)
        now = _now()

        async def one(rec: RequestRecord) -> None:
            async with sem:
                await clients[rec.index % 4].stream("/v1/completions", BODY, rec, now)

        try:
            await asyncio.gather(*(one(r) for r in records))
        finally:
            for c in clients:
                await c.aclose()
    errors = [r.error for r in records if r.error is not None]
    assert errors == []
    assert all(r.output_tokens == n_tokens for r in records)
    assert all(r.cached_tokens == 1 and r.usage_prompt_tokens == 3 for r in records)
    assert all(len(r.chunk_gaps_s) == n_tokens - 1 for r in records)
    assert all(r.ok for r in records)


def _random_stream(seed: int) -> tuple[list[bytes], int, int | None]:
    """A stream mixing the shapes a server may send: (payloads, token chunks, usage
    completion tokens or None). Texts hold quotes, backslashes, escaped line breaks and
    non-ASCII; some chunks change shape mid-stream."""
    rnd = random.Random(seed)
    chat = rnd.random() < 0.5
    head: dict[str, object] = {"id": f"x{seed}", "created": 1700000000 + seed, "model": "m"}
    texts = [" a", "", ' "q"', "\\", "line\nbreak", "é ✓", "}],\"usage\":{", " data: x"]

    def chunk(text: str | None, finish: str | None = None, n_choices: int = 1,
              usage: dict[str, int] | None = None, role: bool = False) -> bytes:
        choices = []
        for i in range(n_choices):
            if chat:
                delta: dict[str, object] = {} if text is None else {"content": text}
                if role:
                    delta["role"] = "assistant"
                choices.append({"index": i, "delta": delta, "finish_reason": finish})
            else:
                choices.append({"index": i, "text": text or "", "finish_reason": finish})
        return orjson.dumps({**head, "choices": choices, "usage": usage})

    payloads: list[bytes] = []
    tokens = 0
    if chat and rnd.random() < 0.7:
        payloads.append(chunk("", role=True))
    for _ in range(rnd.randint(1, 60)):
        r = rnd.random()
        if r < 0.04:  # mid-stream chunks that carry no token
            payloads.append(chunk(None) if chat else orjson.dumps({**head, "choices": []}))
            continue
        if r < 0.06:
            payloads.append(chunk("", role=True) if chat else chunk(None, "stop"))
            continue
        if r < 0.1:
            payloads.append(chunk("x", n_choices=2))
        elif r < 0.13:
            head["created"] = int(str(head["created"])) + 1  # the shape changes
            payloads.append(chunk("y"))
        else:
            payloads.append(chunk(rnd.choice(texts)))
        tokens += 1
    usage = None
    r = rnd.random()
    if r < 0.3:
        payloads.append(chunk(None, "stop"))
    elif r < 0.6:
        usage = tokens + 7
        payloads.append(chunk("end", "length", usage={"completion_tokens": usage}))
        tokens += 1
    if rnd.random() < 0.5:
        usage = tokens + 3
        payloads.append(orjson.dumps({**head, "choices": [],
                                      "usage": {"completion_tokens": usage}}))
    payloads.append(b"[DONE]")
    return payloads, tokens, usage


def test_random_stream_reference_counts() -> None:
    for seed in range(50):
        payloads, tokens, usage = _random_stream(seed)
        events = [interpret_payload(p) for p in payloads]
        assert sum(ev.has_token for ev in events) == tokens, seed
        last_usage = [ev.usage for ev in events if ev.usage is not None]
        assert (last_usage[-1].completion_tokens if last_usage else None) == usage


@pytest.mark.asyncio
async def test_random_shapes_and_splits_match_the_full_parse() -> None:
    """The bulk token recognition agrees with parsing every chunk, for mixed stream
    shapes however the bytes arrive (whole body, tiny pieces, anything between)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        seed = int(request.headers["X-Seed"])
        payloads, _, _ = _random_stream(seed)
        body = b"".join(b"data: " + p + b"\n\n" for p in payloads)
        rnd = random.Random(seed)
        resp = await _start_sse(request)
        mode = seed % 3
        pos = 0
        while pos < len(body):
            step = len(body) if mode == 0 else (rnd.randint(1, 7) if mode == 1
                                                 else rnd.randint(50, 3000))
            await resp.write(body[pos : pos + step])
            pos += step
            if mode and rnd.random() < 0.1:
                await asyncio.sleep(0.001)
        await resp.write_eof()
        return resp

    seeds = range(60)
    records = {seed: _record(seed) for seed in seeds}
    async with serve({"/v1/completions": handler}) as url:
        clients = {s: StreamClient(url, headers={"X-Seed": str(s)}) for s in seeds}

        async def one(seed: int) -> None:
            async with clients[seed] as client:
                await client.stream("/v1/completions", BODY, records[seed], _now())

        await asyncio.gather(*(one(s) for s in seeds))
    for seed, rec in records.items():
        _, tokens, usage = _random_stream(seed)
        assert rec.error is None, (seed, rec.error)
        assert rec.output_tokens == (usage if usage is not None else tokens), seed
        assert len(rec.chunk_gaps_s) == tokens - 1, seed


# -- (c) HTTP errors ---------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [400, 500])
async def test_http_error_is_recorded(status: int) -> None:
    message = "x" * 500

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": {"message": message}}, status=status)

    async with serve({"/v1/completions": handler}) as url, StreamClient(url) as client:
        rec = _record()
        await client.stream("/v1/completions", BODY, rec, _now())
    assert rec.status == status
    assert rec.error is not None and rec.error.startswith(f"HTTP {status}: {{")
    assert len(rec.error) < 260
    assert not rec.ok
    assert rec.end_s is not None
    assert rec.ttft_s is None


# -- (d) connection refused ----------------------------------------------------------


def _unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.asyncio
async def test_connection_refused_is_recorded() -> None:
    async with StreamClient(f"http://127.0.0.1:{_unused_port()}") as client:
        rec = _record()
        await client.stream("/v1/completions", BODY, rec, _now())
    assert rec.error is not None
    assert "Connect" in rec.error  # ClientConnectorError / connection refused
    assert rec.status is None
    assert rec.end_s is not None and not rec.ok


# -- (e) the server goes away mid-stream ------------------------------------------------


@pytest.mark.asyncio
async def test_connection_closed_mid_stream_keeps_partial_measurements() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await _start_sse(request)
        for i in range(3):
            await resp.write(_token_event(i))
            await asyncio.sleep(0.002)
        assert request.transport is not None
        request.transport.abort()
        return resp

    async with serve({"/v1/completions": handler}) as url, StreamClient(url) as client:
        rec = _record()
        await client.stream("/v1/completions", BODY, rec, _now())
    assert rec.error is not None, rec
    assert rec.status == 200
    assert rec.ttft_s is not None
    assert rec.output_tokens == 3
    assert len(rec.chunk_gaps_s) == 2
    assert rec.end_s is not None and not rec.ok


@pytest.mark.asyncio
async def test_stream_ending_without_done_and_without_tokens_is_an_error() -> None:
    async def empty(request: web.Request) -> web.StreamResponse:
        resp = await _start_sse(request)
        await resp.write(b": nothing to say\n\n")
        await resp.write_eof()
        return resp

    async def no_done(request: web.Request) -> web.StreamResponse:
        resp = await _start_sse(request)
        await resp.write(
            _token_event(0) + _token_event(1) + b"data: " + b'{"choices":[{"text":"x"}]}'
        )
        await resp.write_eof()  # last event without its blank line, no [DONE]
        return resp

    routes: dict[str, Handler] = {"/empty": empty, "/no-done": no_done}
    async with serve(routes) as url, StreamClient(url) as client:
        rec = _record()
        await client.stream("/empty", BODY, rec, _now())
        rec2 = _record()
        await client.stream("/no-done", BODY, rec2, _now())
    assert rec.outcome == "protocol_error" and rec.error is not None
    assert "no server-sent event in the body" in rec.error
    assert rec.end_s is not None
    # three tokens, then the body ends: no [DONE] and no finish_reason is a broken stream
    assert rec2.outcome == "protocol_error" and rec2.output_tokens == 3 and not rec2.ok
    assert rec2.error is not None and "ended before [DONE]" in rec2.error


@pytest.mark.asyncio
async def test_error_payload_in_stream_is_recorded() -> None:
    err = {"error": {"message": "engine died", "type": "InternalServerError", "code": 500}}

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await _start_sse(request)
        await resp.write(_token_event(0) + b"data: " + orjson.dumps(err) + b"\n\n" + DONE)
        await resp.write_eof()
        return resp

    async with serve({"/v1/completions": handler}) as url, StreamClient(url) as client:
        rec = _record()
        await client.stream("/v1/completions", BODY, rec, _now())
    assert rec.error is not None and "engine died" in rec.error
    assert rec.output_tokens == 1 and rec.ttft_s is not None and rec.end_s is not None


@pytest.mark.asyncio
async def test_read_timeout_is_recorded() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await _start_sse(request)
        await resp.write(_token_event(0))
        await asyncio.sleep(2)
        return resp

    limits = ClientLimits(token_timeout_s=0.1)
    async with (
        serve({"/v1/completions": handler}) as url,
        StreamClient(url, limits=limits) as client,
    ):
        rec = _record()
        await client.stream("/v1/completions", BODY, rec, _now())
    assert rec.outcome == "timeout" and rec.error is not None
    assert "token_timeout_s=0.1" in rec.error
    assert rec.output_tokens == 1 and rec.end_s is not None


@pytest.mark.asyncio
async def test_cancellation_propagates_after_recording() -> None:
    started = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = await _start_sse(request)
        await resp.write(_token_event(0))
        started.set()
        await asyncio.sleep(5)
        return resp

    async with serve({"/v1/completions": handler}) as url, StreamClient(url) as client:
        rec = _record()
        task = asyncio.create_task(client.stream("/v1/completions", BODY, rec, _now()))
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert rec.outcome == "cancelled" and rec.error == "cancelled: the run stopped"
    assert rec.output_tokens == 1 and rec.ttft_s is not None and rec.end_s is not None


# -- (f) time to first token ----------------------------------------------------------


@pytest.mark.asyncio
async def test_ttft_matches_a_known_first_byte_delay() -> None:
    delay = 0.05

    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(delay)
        resp = await _start_sse(request)
        for event in _sse_body(3):
            await resp.write(event)
        await resp.write_eof()
        return resp

    async with serve({"/v1/completions": handler}) as url, StreamClient(url) as client:
        # A warm-up request opens the connection, as in a running load test.
        await client.stream("/v1/completions", BODY, _record(), _now())
        ttfts = []
        for i in range(3):
            rec = _record(i)
            await client.stream("/v1/completions", BODY, rec, _now())
            assert rec.ttft_s is not None
            ttfts.append(rec.ttft_s)
    best = min(ttfts)
    assert delay - 0.001 <= best <= delay + 0.010, ttfts


# -- (g) connection reuse -------------------------------------------------------------


@pytest.mark.asyncio
async def test_sequential_requests_reuse_the_connection() -> None:
    transports: set[object] = set()

    async def handler(request: web.Request) -> web.StreamResponse:
        transports.add(request.transport)
        resp = await _start_sse(request)
        await resp.write(b"".join(_sse_body(4)))
        await resp.write_eof()
        return resp

    async with serve({"/v1/completions": handler}) as url, StreamClient(url) as client:
        records = [_record(i) for i in range(100)]
        for rec in records:
            await client.stream("/v1/completions", BODY, rec, _now())
    assert all(r.ok and r.output_tokens == 4 for r in records)
    assert 1 <= len(transports) <= 2


# -- (h) concurrency ------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("max_connections", [0, 64])
async def test_all_concurrent_streams_are_in_flight_at_once(max_connections: int) -> None:
    want = 64
    in_flight = 0
    peak = 0
    all_in = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight >= want:
            all_in.set()
        try:
            resp = await _start_sse(request)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(all_in.wait(), 5)
            await resp.write(b"".join(_sse_body(2)))
            await resp.write_eof()
            return resp
        finally:
            in_flight -= 1

    limits = ClientLimits(max_connections=max_connections)
    async with (
        serve({"/v1/completions": handler}) as url,
        StreamClient(url, limits=limits) as client,
    ):
        records = [_record(i) for i in range(want)]
        now = _now()
        await asyncio.gather(*(client.stream("/v1/completions", BODY, r, now) for r in records))
    assert peak == want
    assert all(r.ok for r in records)


# -- (i) the Authorization header -------------------------------------------------------


@pytest.mark.asyncio
async def test_authorization_reaches_the_server_and_never_the_record() -> None:
    seen: list[str] = []

    async def ok(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization", ""))
        assert request.headers["Content-Type"] == "application/json"
        assert await request.read() == BODY
        resp = await _start_sse(request)
        await resp.write(b"".join(_sse_body(2)))
        await resp.write_eof()
        return resp

    async def echo(request: web.Request) -> web.StreamResponse:
        # A careless server that echoes the credential in its error.
        auth = request.headers.get("Authorization", "")
        return web.Response(status=401, text=f"bad credential {auth} / {auth.split()[-1]}")

    routes: dict[str, Handler] = {"/v1/completions": ok, "/echo": echo}
    async with serve(routes) as url, StreamClient(url, headers=AUTH) as client:
        rec = _record()
        await client.stream("/v1/completions", BODY, rec, _now())
        rec2 = _record()
        await client.stream("/echo", BODY, rec2, _now())
    assert seen == [AUTH["Authorization"]]
    assert rec.ok
    assert rec2.status == 401 and rec2.error is not None and "***" in rec2.error
    for r in (rec, rec2):
        assert SECRET not in repr(r)
        assert SECRET not in str(r.to_dict())


# -- helpers and configuration ----------------------------------------------------------


@pytest.mark.asyncio
async def test_stream_needs_an_open_client() -> None:
    client = StreamClient("http://127.0.0.1:1")
    assert client.closed
    with pytest.raises(RuntimeError, match="not open"):
        await client.stream("/v1/completions", BODY, _record(), _now())
    await client.aclose()  # closing an unopened client is harmless


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_connections": -1}, "max_connections"),
        ({"max_connections": 1.5}, "max_connections"),
        ({"max_connections": True}, "max_connections"),
        ({"connect_timeout_s": 0}, "connect_timeout_s"),
        ({"token_timeout_s": -2.0}, "token_timeout_s"),
        ({"token_timeout_s": float("nan")}, "token_timeout_s"),
        ({"first_byte_timeout_s": "5"}, "first_byte_timeout_s"),
        ({"request_timeout_s": 0.0}, "request_timeout_s"),
        ({"request_timeout_s": float("inf")}, "request_timeout_s"),
    ],
)
def test_client_limits_are_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        ClientLimits(**kwargs)  # type: ignore[arg-type]


def test_client_limits_defaults() -> None:
    limits = ClientLimits()
    assert limits.max_connections == 0 and limits.request_timeout_s is None
    assert (limits.connect_timeout_s, limits.first_byte_timeout_s,
            limits.token_timeout_s) == (10.0, 45.0, 30.0)
    assert not limits.retry_throttled and limits.max_connect_failures == 10
    assert ClientLimits(max_connections=8, request_timeout_s=30).request_timeout_s == 30


@pytest.mark.parametrize("bad", ["127.0.0.1:8000", "ftp://host", "http://"])
def test_base_url_is_validated(bad: str) -> None:
    with pytest.raises(ConfigError, match="base_url"):
        StreamClient(bad)
