"""The measured requests' own HTTP/1.1 transport, for ``http://`` and ``https://`` servers.

A :class:`Pool` keeps alive up to ``max_connections`` connections to one host. A request
is written in one call; the answer is parsed by ``httptools`` (llhttp, the parser
uvicorn uses) inside the connection's ``data_received``, and its body pieces are handed
straight to the reader (:meth:`Answer.readany`), which waits on a future only when no
data is there yet. There is no per-request task, stream object or header merging: on a
small machine this path costs about three quarters of the client CPU per streamed
request of a minimal aiohttp client, while doing all of the driver's stream reading
(``benchmarks/bench_clients.py``), so the client is not what limits a load test.
Over TLS (``ssl``: a context, see :func:`tls_context`) the same protocol reads what
asyncio's TLS layer decrypts; TLS adds its own cost per byte and a handshake per
connection (kept alive like the others).

Failures are exceptions the client classifies: :class:`ServerClosed` (the connection
ended before or during the answer; an ``OSError``), :class:`BadAnswer` (bytes that are
not an HTTP answer; a ``ValueError``), ``OSError`` / ``TimeoutError`` from connecting.
A connection whose answer was not read to its end (cancelled, failed, an error body
read in part) is closed, never reused.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import httptools

from ..errors import CtxplatError

__all__ = ["Answer", "BadAnswer", "Pool", "ServerClosed", "check_headers", "tls_context"]

_HIGH_WATER = 4 * 1024 * 1024  # body bytes held for the reader before reading pauses
_IDLE_MAX_S = 75.0  # an idle connection older than this is closed, not reused


class ServerClosed(CtxplatError, ConnectionError):
    """The server closed the connection before the answer ended; ``answered`` says
    whether its status line had arrived."""

    def __init__(self, message: str, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered


class BadAnswer(CtxplatError, ValueError):
    """What the server sent is not a valid HTTP/1.x answer."""


def tls_context() -> ssl.SSLContext:
    """How ``https://`` servers are reached: the system's trusted certificates (or the
    bundle named by ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``), host names checked, HTTP/1.1
    offered by ALPN (a server that prefers HTTP/2 answers in HTTP/1.1). Made once per
    value of those variables (loading the certificates reads files)."""
    return _tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=4)
def _tls_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context()  # reads the two variables itself
    context.set_alpn_protocols(["http/1.1"])
    return context


def check_headers(headers: Mapping[str, str]) -> bytes:
    """The request header lines for ``headers`` (without ``Content-Length``, which the
    transport writes per request); ``ValueError`` for a name or value that cannot go
    into an HTTP/1.1 header as is (a line break, a non-Latin-1 character, an empty or
    spaced name)."""
    lines = []
    for name, value in headers.items():
        if name.lower() == "content-length":
            continue
        if not name or any(c in name for c in " \t\r\n:") or any(c in value for c in "\r\n"):
            raise ValueError(f"header {name!r}: names must be tokens and values one line")
        try:
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        except UnicodeEncodeError:
            raise ValueError(f"header {name!r}: only Latin-1 characters can be sent") from None
    return b"".join(lines)


class Answer(asyncio.Protocol):
    """One keep-alive connection and the answer being read on it (the protocol object
    of the transport, and what the client reads: ``status``, ``headers``,
    :meth:`readany`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.complete = False
        self.keep_alive = False
        self._chunks: list[bytes] = []
        self._held = 0
        self._paused = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._length_known = False

    # -- the reader's side -----------------------------------------------------------

    @property
    def content(self) -> Answer:
        return self

    async def head(self) -> None:
        """Wait for the status line and headers."""
        while not self.status:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def readany(self) -> bytes:
        """The body bytes received since the last call; ``b""`` at the end of the body.
        Raises :class:`ServerClosed` / :class:`BadAnswer` when the answer broke off."""
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._held = 0
                if self._paused and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return data
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait()

    async def _wait(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the transport's side --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop's is not a subclass)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadAnswer("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(BadAnswer(f"not a valid HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.complete:
            return
        if self.status and not self._length_known and self._error is None:
            self.complete = True  # a body without a length ends with the connection
            self._wake()
            return
        answered = bool(self.status)
        where = "mid-answer" if answered else "without answering"
        why = f": {exc}" if exc else ""
        self._fail(ServerClosed(f"the server closed the connection {where}{why}", answered))

    def _fail(self, exc: BaseException) -> None:
        if self._error is None and not self.complete:
            self._error = exc
        if self.transport is not None:
            self.transport.close()
        self._wake()

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").title()
        text = value.decode("latin-1")
        if key in ("Content-Length", "Transfer-Encoding"):
            self._length_known = True
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self.headers = {}  # an interim answer: the real one follows
            return
        self.status = status
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._held += len(body)
        if self._held > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.status:
            return  # the end of an interim answer
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()
        self._wake()


class Pool:
    """Keep-alive connections to ``host:port``, at most ``limit`` open (0: no limit);
    ``ssl``: speak TLS with this context (None: plain TCP)."""

    def __init__(self, host: str, port: int, *, limit: int, connect_timeout_s: float,
                 headers: Mapping[str, str], ssl: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.ssl = ssl
        self.connect_timeout_s = connect_timeout_s
        authority = f"[{host}]" if ":" in host else host
        own_host = any(name.lower() == "host" for name in headers)  # the caller's wins
        self._fixed = (b"" if own_host else f"Host: {authority}:{port}\r\n".encode("latin-1")
                       ) + check_headers(headers)
        self._heads: dict[str, bytes] = {}
        self._idle: list[Answer] = []
        self._all: set[Answer] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()

    def _head(self, path: str) -> bytes:
        head = self._heads.get(path)
        if head is None:
            if any(c in path for c in " \r\n"):
                raise ValueError(f"path {path!r}: no spaces or line breaks")
            head = self._heads[path] = (f"POST {path} HTTP/1.1\r\n".encode("latin-1")
                                        + self._fixed + b"Content-Length: ")
        return head

    @asynccontextmanager
    async def post(self, path: str, body: bytes) -> AsyncIterator[Answer]:
        """Send ``body`` to ``path``; yield the answer once its headers are in."""
        head = self._head(path) + str(len(body)).encode() + b"\r\n\r\n"
        conn = await self._acquire()
        reuse = False
        try:
            assert conn.transport is not None
            conn.transport.writelines((head, body))
            await conn.head()
            yield conn
            reuse = conn.complete and conn.keep_alive and not conn.closed
        finally:
            self._release(conn, reuse)

    async def _acquire(self) -> Answer:
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        while True:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed and now - conn.idle_since < _IDLE_MAX_S:
                    conn._reset()
                    return conn
                self._drop(conn)
            if not self.limit or len(self._all) < self.limit:
                break
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        conn = Answer(loop)
        self._all.add(conn)
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: conn, self.host, self.port, ssl=self.ssl,
                                       server_hostname=self.host if self.ssl else None),
                self.connect_timeout_s)
            conn.transport = transport  # (uvloop may call connection_made later)
        except BaseException:
            self._drop(conn)
            raise
        return conn

    def _release(self, conn: Answer, reuse: bool) -> None:
        if reuse:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
            self._wake_one()
        else:
            self._drop(conn)  # (wakes a waiter: a connection may be opened)

    def _drop(self, conn: Answer) -> None:
        self._all.discard(conn)
        if conn.transport is not None and not conn.closed:
            conn.transport.close()
        conn.closed = True
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Close every connection, idle or in use."""
        for conn in list(self._all):
            self._drop(conn)
        self._idle.clear()
