"""The own HTTP/1.1 transport (driver.h1) against raw socket servers: answer framings
aiohttp's test server does not produce (close-delimited bodies, interim answers,
``Connection: close``, bytes that are not HTTP), the request it writes, and its pool."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import orjson
import pytest

from pytest_ctxplat.driver.http import ClientLimits, StreamClient
from pytest_ctxplat.errors import ConfigError
from pytest_ctxplat.report.records import RequestRecord

BODY = orjson.dumps({"model": "m", "prompt": [1, 2, 3], "max_tokens": 2, "stream": True})
EVENTS = (b'data: {"id":"c","choices":[{"index":0,"text":" a","finish_reason":null}]}\n\n'
          b'data: {"id":"c","choices":[{"index":0,"text":" b","finish_reason":"length"}]}\n\n'
          b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
          b"data: [DONE]\n\n")
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)


class RawServer:
    """Answers each request with ``answer(n)`` (n: the request's number), then closes
    the connection when ``close`` says so; keeps the request heads and counts
    connections."""

    def __init__(self, answer: Callable[[int], bytes], close: bool = False) -> None:
        self.answer, self.close = answer, close
        self.heads: list[bytes] = []
        self.connections = 0
        self.in_flight = self.most_in_flight = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                self.heads.append(head)
                await asyncio.sleep(0.01)
                writer.write(self.answer(len(self.heads)))
                await writer.drain()
                if self.close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.in_flight -= 1
            writer.close()


@contextlib.asynccontextmanager
async def raw_server(answer: Callable[[int], bytes], close: bool = False
                     ) -> AsyncIterator[tuple[str, RawServer]]:
    state = RawServer(answer, close)
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", state
    finally:
        server.close()
        await server.wait_closed()


async def _send(url: str, n: int = 1, **kwargs: object) -> list[RequestRecord]:
    records = [RequestRecord(session_id="s", user=0, index=i, prompt_tokens=3, max_tokens=2)
               for i in range(n)]
    async with StreamClient(url, limits=ClientLimits(first_byte_timeout_s=5.0),
                            transport="h1", **kwargs) as client:  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        for rec in records:
            await client.stream("/v1/completions", BODY, rec, loop.time)
    return records


@pytest.mark.asyncio
async def test_a_body_ended_by_closing_the_connection_is_read_whole() -> None:
    async with raw_server(lambda _: SSE_HEAD + b"Connection: close\r\n\r\n" + EVENTS,
                          close=True) as (url, server):
        records = await _send(url, 2)
    assert [(r.outcome, r.output_tokens, r.finish_reason) for r in records] == [
        ("ok", 2, "length")] * 2
    assert server.connections == 2  # "Connection: close": no reuse


@pytest.mark.asyncio
async def test_content_length_and_chunked_answers_reuse_one_connection() -> None:
    def answer(n: int) -> bytes:
        if n % 2:
            return SSE_HEAD + b"Content-Length: %d\r\n\r\n" % len(EVENTS) + EVENTS
        return SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(EVENTS)

    async with raw_server(answer) as (url, server):
        records = await _send(url, 4)
    assert {r.outcome for r in records} == {"ok"}
    assert server.connections == 1


@pytest.mark.asyncio
async def test_an_interim_answer_is_skipped() -> None:
    async with raw_server(lambda _: b"HTTP/1.1 100 Continue\r\n\r\n" + SSE_HEAD
                          + b"Content-Length: %d\r\n\r\n" % len(EVENTS) + EVENTS
                          ) as (url, _):
        (rec,) = await _send(url)
    assert (rec.outcome, rec.status, rec.output_tokens) == ("ok", 200, 2)


@pytest.mark.asyncio
async def test_bytes_that_are_not_http_are_a_recorded_failure() -> None:
    async with raw_server(lambda _: b"SSH-2.0-OpenSSH\r\n\r\n", close=True) as (url, _):
        (rec,) = await _send(url)
    assert rec.outcome == "connect_error"
    assert "not a valid HTTP answer" in (rec.error or "")


@pytest.mark.asyncio
async def test_a_broken_chunked_body_is_a_protocol_error_keeping_the_tokens() -> None:
    first = EVENTS.split(b"\n\n")[0] + b"\n\n"
    async with raw_server(lambda _: SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
                          + b"%x\r\n%s\r\n" % (len(first), first), close=True) as (url, _):
        (rec,) = await _send(url)
    assert rec.outcome == "protocol_error"
    assert "mid-answer" in (rec.error or "")
    assert rec.output_tokens == 1 and rec.ttft_s is not None


@pytest.mark.asyncio
async def test_a_server_closing_without_answering_is_recorded() -> None:
    async with raw_server(lambda _: b"", close=True) as (url, _):
        (rec,) = await _send(url)
    assert rec.outcome == "protocol_error"
    assert "without answering" in (rec.error or "")


@pytest.mark.asyncio
async def test_the_request_line_keeps_the_base_path_and_sends_the_headers() -> None:
    async with raw_server(lambda _: SSE_HEAD + b"Content-Length: %d\r\n\r\n" % len(EVENTS)
                          + EVENTS) as (url, server):
        (rec,) = await _send(url + "/tenant-a/", headers={"Authorization": "Bearer k"})
    assert rec.outcome == "ok"
    head = server.heads[0].decode()
    assert head.startswith("POST /tenant-a/v1/completions HTTP/1.1\r\n")
    assert "\r\nAuthorization: Bearer k\r\n" in head
    assert "\r\nContent-Type: application/json\r\n" in head
    assert f"\r\nContent-Length: {len(BODY)}\r\n" in head


@pytest.mark.asyncio
async def test_a_host_header_given_by_the_caller_replaces_the_default() -> None:
    async with raw_server(lambda _: SSE_HEAD + b"Content-Length: %d\r\n\r\n" % len(EVENTS)
                          + EVENTS) as (url, server):
        (rec,) = await _send(url, headers={"Host": "models.internal"})
    assert rec.outcome == "ok"
    head = server.heads[0].decode()
    assert "\r\nHost: models.internal\r\n" in head and head.count("Host:") == 1


@pytest.mark.asyncio
async def test_the_pool_holds_at_most_max_connections() -> None:
    async with raw_server(lambda _: SSE_HEAD + b"Content-Length: %d\r\n\r\n" % len(EVENTS)
                          + EVENTS) as (url, server):
        records = [RequestRecord(session_id="s", user=0, index=i, prompt_tokens=3,
                                 max_tokens=2) for i in range(12)]
        async with StreamClient(url, limits=ClientLimits(max_connections=3),
                                transport="h1") as client:
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(client.stream("/v1/completions", BODY, r, loop.time)
                                   for r in records))
    assert {r.outcome for r in records} == {"ok"}
    assert server.connections == 3 and server.most_in_flight == 3


@pytest.mark.asyncio
async def test_a_body_larger_than_the_read_buffer_arrives_whole() -> None:
    pad = b": " + b"x" * 1022 + b"\n\n"
    body = pad * 6 * 1024 + EVENTS  # 6 MB of comments, then the events
    async with raw_server(lambda _: SSE_HEAD + b"Content-Length: %d\r\n\r\n" % len(body)
                          + body) as (url, _):
        (rec,) = await _send(url)
    assert (rec.outcome, rec.output_tokens) == ("ok", 2)


def test_headers_that_cannot_be_sent_are_a_config_error() -> None:
    async def go() -> None:
        async with StreamClient("http://127.0.0.1:9", headers={"X-Key": "a\r\nHost: b"}):
            pass

    with pytest.raises(ConfigError, match="X-Key"):
        asyncio.run(go())


def test_transport_is_validated() -> None:
    with pytest.raises(ConfigError, match="valid: auto, h1, aiohttp"):
        StreamClient("http://127.0.0.1:9", transport="h2")
    with pytest.raises(ConfigError, match="http:// only"):
        StreamClient("https://127.0.0.1:9", transport="h1")
    assert StreamClient("https://127.0.0.1:9").transport == "aiohttp"
    assert StreamClient("http://127.0.0.1:9").transport == "h1"
