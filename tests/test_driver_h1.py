"""The own HTTP/1.1 transport (driver.h1) against raw socket servers: answer framings
aiohttp's test server does not produce (close-delimited bodies, interim answers,
``Connection: close``, bytes that are not HTTP), the request it writes, its pool, and
TLS (certificates from a test authority, ``trustme``)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest
import trustme

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
async def raw_server(answer: Callable[[int], bytes], close: bool = False,
                     tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[str, RawServer]]:
    state = RawServer(answer, close)
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}", state
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


def _server_tls(ca: trustme.CA, name: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    return context


@pytest.fixture
def authority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> trustme.CA:
    """A test certificate authority that clients trust (``SSL_CERT_FILE``)."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return ca


def _answer(_: int) -> bytes:
    return SSE_HEAD + b"Content-Length: %d\r\n\r\n" % len(EVENTS) + EVENTS


@pytest.mark.asyncio
async def test_https_streams_over_tls_on_kept_alive_connections(authority: trustme.CA) -> None:
    async with raw_server(_answer, tls=_server_tls(authority, "127.0.0.1")) as (url, server):
        assert url.startswith("https://")
        records = await _send(url, 3)
    assert [(r.outcome, r.output_tokens) for r in records] == [("ok", 2)] * 3
    assert server.connections == 1
    assert server.heads[0].startswith(b"POST /v1/completions HTTP/1.1\r\n")


@pytest.mark.asyncio
async def test_https_checks_the_certificate_and_its_name(authority: trustme.CA) -> None:
    other = trustme.CA()  # an authority the client does not trust
    async with raw_server(_answer, tls=_server_tls(other, "127.0.0.1")) as (url, _):
        (untrusted,) = await _send(url)
    async with raw_server(_answer, tls=_server_tls(authority, "models.internal")) as (url, _):
        (misnamed,) = await _send(url)
    for rec in (untrusted, misnamed):
        assert rec.outcome == "connect_error" and rec.status is None
        assert "CERTIFICATE_VERIFY_FAILED" in (rec.error or "")
    assert "IP address mismatch" in (misnamed.error or "")


@pytest.mark.asyncio
async def test_a_tls_answer_broken_off_is_a_protocol_error_keeping_the_tokens(
        authority: trustme.CA) -> None:
    first = EVENTS.split(b"\n\n")[0] + b"\n\n"
    async with raw_server(lambda _: SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
                          + b"%x\r\n%s\r\n" % (len(first), first), close=True,
                          tls=_server_tls(authority, "127.0.0.1")) as (url, _):
        (rec,) = await _send(url)
    assert rec.outcome == "protocol_error" and "mid-answer" in (rec.error or "")
    assert rec.output_tokens == 1 and rec.ttft_s is not None


def test_headers_that_cannot_be_sent_are_a_config_error() -> None:
    async def go() -> None:
        async with StreamClient("http://127.0.0.1:9", headers={"X-Key": "a\r\nHost: b"}):
            pass

    with pytest.raises(ConfigError, match="X-Key"):
        asyncio.run(go())


def test_transport_is_validated() -> None:
    with pytest.raises(ConfigError, match="valid: auto, h1, aiohttp"):
        StreamClient("http://127.0.0.1:9", transport="h2")
    assert StreamClient("https://127.0.0.1:9").transport == "h1"
    assert StreamClient("http://127.0.0.1:9").transport == "h1"
    assert StreamClient("https://127.0.0.1:9", transport="aiohttp").transport == "aiohttp"
