"""The driver's HTTP client: streamed OpenAI-compatible requests, measured.

:class:`StreamClient` is the only place the driver touches an HTTP library. It posts an
already-encoded JSON body, reads the server-sent events as the socket delivers them and
fills a :class:`~pytest_ctxplat.report.records.RequestRecord`: start, time to first
token, gaps between token chunks, end, output and cached tokens, HTTP status, and the
request's outcome class (``ok``, ``http_status``, ``connect_error``, ``timeout``,
``protocol_error``, ``incomplete``, ``throttled``, ``cancelled``).

It uses its own HTTP/1.1 transport (:mod:`.h1`: keep-alive connections, plain or TLS,
answers parsed by httptools in the protocol callbacks), which costs about three quarters
of the client CPU per request of a minimal aiohttp client; aiohttp is the other
transport, for comparison (``transport="aiohttp"``). On a small machine a plain httpx
stream reaches a few hundred requests per second, these thousands: the client must not
be what limits a load test.
Control-plane calls (probe, reset, /metrics) go through httpx in the orchestrator and
the server backends.

Token chunks are not parsed as JSON one by one: the first one of a stream is, and
becomes a :class:`~pytest_ctxplat.driver.sse.TokenTemplate`; the token chunks of each
received buffer are then counted in bulk from their bytes, and only the chunks of another
shape (finish reason, usage, errors, ``[DONE]``) are parsed. See ``docs/performance.md``.

Failures never raise out of :meth:`StreamClient.stream`; they are written into the record
(``outcome``, ``error``), keeping what was measured until then. Only the run's own
cancellation propagates (the request is then ``cancelled``).
"""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import aiohttp
from yarl import URL

from pytest_ctxplat.driver.h1 import Pool, ServerClosed, tls_context
from pytest_ctxplat.driver.limits import (
    DEFAULT_LIMITS,
    THROTTLE_STATUSES,
    ClientLimits,
    DeadlineWatch,
    Flight,
    retry_after_s,
    swallow_own_cancel,
)
from pytest_ctxplat.driver.sse import (
    EMPTY_EVENT,
    TOKEN_EVENT,
    SSEDecoder,
    StreamUsage,
    TokenTemplate,
    interpret_payload,
    split_region,
)
from pytest_ctxplat.errors import ConfigError, DriverError
from pytest_ctxplat.report.records import RequestRecord
from pytest_ctxplat.secrets import redact, secret_values

__all__ = ["ClientLimits", "StreamClient"]

_ERROR_BODY_CHARS = 200
class StreamClient:
    """Streams OpenAI-compatible requests over one pooled aiohttp session.

    Use as an async context manager (or call :meth:`aclose`)::

        async with StreamClient("http://127.0.0.1:8000", headers=auth) as client:
            await client.stream("/v1/completions", body, record, loop.time)

    Connections are kept alive and reused across requests. ``headers`` (for example
    ``Authorization``) go with every request; their secret values never appear in
    recorded errors. ``transport``: ``"h1"`` (the own HTTP/1.1 transport, :mod:`.h1`),
    ``"aiohttp"``, or ``"auto"`` (the default: ``h1``). ``https://`` servers are checked
    against the system's trusted certificates, or the bundle named by ``SSL_CERT_FILE``
    (either transport).
    """

    TRANSPORTS = ("auto", "h1", "aiohttp")
    default_transport = "auto"  # what ``transport=None`` means

    def __init__(
        self,
        base_url: str,
        *,
        limits: ClientLimits = DEFAULT_LIMITS,
        headers: Mapping[str, str] | None = None,
        transport: str | None = None,
    ) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"StreamClient base_url must be an http(s) URL, got {base_url!r}")
        transport = transport or self.default_transport
        if transport not in self.TRANSPORTS:
            raise ConfigError(f"StreamClient transport: {transport!r}; valid: "
                              f"{', '.join(self.TRANSPORTS)}")
        if transport == "auto":
            transport = "h1"
        self.transport = transport
        self.base_url = base_url.rstrip("/")
        self.limits = limits
        self._headers: dict[str, str] = dict(headers or {})
        self._secrets = secret_values(self._headers)
        self._session: aiohttp.ClientSession | None = None
        self._pool: Pool | None = None
        self._watch: DeadlineWatch | None = None
        self._urls: dict[str, URL] = {}

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> StreamClient:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Create the session (done by ``async with``); a second call does nothing."""
        if self._session is not None or self._pool is not None:
            return
        limits = self.limits
        # every request is a JSON POST: its Content-Type is a session header, not merged
        # into the headers of each request
        headers = {"Accept-Encoding": "identity",
                   **{k: v for k, v in self._headers.items() if k.lower() != "content-type"},
                   "Content-Type": "application/json"}
        if self.transport == "h1":
            url = URL(self.base_url)
            tls = tls_context() if url.scheme == "https" else None
            try:
                self._pool = Pool(url.host or "", url.port or (443 if tls else 80),
                                  limit=limits.max_connections,
                                  connect_timeout_s=limits.connect_timeout_s, headers=headers,
                                  ssl=tls)
            except ValueError as exc:
                raise ConfigError(f"StreamClient headers: {exc}") from None
            self._start_watch()
            return
        connector = aiohttp.TCPConnector(
            limit=limits.max_connections,
            limit_per_host=limits.max_connections,
            keepalive_timeout=75.0,
            ttl_dns_cache=300,
        )
        # first-byte, token and request deadlines are the watch's (see driver.limits)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=limits.connect_timeout_s,
                                        sock_read=None)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers=headers,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            raise_for_status=False,
        )
        self._start_watch()

    def _start_watch(self) -> None:
        self._watch = DeadlineWatch(self.limits, asyncio.get_running_loop().time)
        self._watch.start()

    async def aclose(self) -> None:
        """Close the session and its connections."""
        session, self._session = self._session, None
        pool, self._pool = self._pool, None
        watch, self._watch = self._watch, None
        if watch is not None:
            await watch.stop()
        if pool is not None:
            pool.close()
        if session is not None:
            await session.close()

    @property
    def closed(self) -> bool:
        return self._session is None and self._pool is None

    def _url(self, path: str) -> URL:
        url = self._urls.get(path)
        if url is None:
            sep = "" if path.startswith("/") else "/"
            url = self._urls[path] = URL(self.base_url + sep + path)
        return url

    def _post(self, path: str, body: bytes) -> Any:
        """The async context manager of one POST: the own transport's or aiohttp's."""
        if self._pool is not None:
            return self._pool.post(self._url(path).raw_path_qs, body)
        if self._session is None:
            raise DriverError("StreamClient is not open: use 'async with StreamClient(...)'")
        return self._session.post(self._url(path), data=body)

    # -- requests --------------------------------------------------------------------

    async def request(self, path: str, body: bytes, record: RequestRecord,
                      now: Callable[[], float]) -> None:
        """:meth:`stream`, then, with ``limits.retry_throttled``, again after each 429 or
        503 (honouring ``Retry-After``, bounded by ``retry_wait_max_s`` and
        ``retry_limit``). The record keeps the first attempt's start, so its times
        include the waits; ``retries`` counts the attempts after the first."""
        await self.stream(path, body, record, now)
        limits = self.limits
        if not limits.retry_throttled:
            return
        start = record.start_s
        backoff = 1.0
        while record.outcome == "throttled" and record.retries < limits.retry_limit:
            wait = record.retry_after_s if record.retry_after_s is not None else backoff
            await asyncio.sleep(min(wait, limits.retry_wait_max_s))
            backoff *= 2
            retries = record.retries + 1
            record.reset()
            record.retries = retries
            await self.stream(path, body, record, now, start=start)

    async def stream(
        self, path: str, body: bytes, record: RequestRecord, now: Callable[[], float],
        start: float | None = None,
    ) -> None:
        """POST ``body`` (encoded JSON) to ``path`` and measure the streamed answer.

        Fills ``record``: ``start_s`` (just before sending, or ``start``), ``status``,
        ``ttft_s`` (first chunk carrying a token, relative to ``start_s``),
        ``chunk_gaps_s`` (between consecutive token chunks; chunks arriving in one buffer
        share its time), ``output_tokens`` (``usage.completion_tokens``, else the token
        chunks counted), ``cached_tokens`` and ``usage_prompt_tokens`` (from ``usage``),
        ``finish_reason``, ``end_s`` and ``outcome``. Never raises except for the run's
        own cancellation; failures set ``outcome`` and ``error`` and keep the partial
        measurements.
        """
        post = self._post(path, body)
        watch = self._watch
        assert watch is not None
        flight = Flight(asyncio.current_task(), watch.clock())
        watch.flights.add(flight)
        record.start_s = now() if start is None else start
        try:
            await self._exchange(post, record, now, flight)
        except asyncio.CancelledError:
            if not swallow_own_cancel(flight):
                record.fail("cancelled", "cancelled: the run stopped", now())
                raise
            assert flight.expired is not None
            record.fail("timeout", f"timeout: {flight.expired}", now())
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            record.fail("timeout", self._redact(f"timeout: connect: {_exc_text(exc)}"), now())
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            record.fail(*self._failure(exc, record), now())
        finally:
            watch.flights.discard(flight)

    async def _exchange(self, post: Any, record: RequestRecord, now: Callable[[], float],
                        flight: Flight) -> None:
        """Send, then read the answer; sets every field but ``start_s``."""
        async with post as resp:
            status = record.status = resp.status
            if status >= 400:
                text = await _read_head(resp.content, _ERROR_BODY_CHARS * 4, self._secrets)
                outcome = "throttled" if status in THROTTLE_STATUSES else "http_status"
                if outcome == "throttled":
                    record.retry_after_s = retry_after_s(resp.headers.get("Retry-After"))
                record.fail(outcome, self._redact(f"HTTP {status}: {text}"), now())
                return
            await self._read_stream(resp, record, now, flight)

    async def _read_stream(self, resp: Any, record: RequestRecord,
                           now: Callable[[], float], flight: Flight) -> None:
        # hot path: one function on purpose. Locals hold bound methods and the loop reads
        # each received buffer once; splitting it into calls costs measurable client CPU
        # per request (docs/performance.md, benchmarks/bench_client_overhead.py).
        start = record.start_s
        n_chunks = 0
        usage: StreamUsage | None = None
        content = resp.content
        readany = content.readany
        decoder = SSEDecoder()
        take = decoder.feed_region
        template = TokenTemplate()
        matches = template.matches
        interpret = interpret_payload
        token_event = TOKEN_EVENT
        gaps = record.chunk_gaps_s
        append_gap = gaps.append
        clock = self._watch.clock if self._watch is not None else now
        finish: str | None = None
        events = 0
        last = -1.0
        done = eof = False
        t = start
        try:
            while True:
                data = await readany()
                t = now()
                if data:
                    region = take(data)
                    if not region:
                        continue
                    k, payloads = _split(template, region)
                    if k:
                        # k token chunks in one buffer: they share its time.
                        if last < 0.0:
                            record.ttft_s = t - start
                        else:
                            append_gap(t - last)
                        if k > 1:
                            _zero_gaps(gaps, k - 1)
                        last = t
                        flight.last = clock()
                        n_chunks += k
                        events += k
                else:
                    # End of body: a last event may lack its blank line.
                    eof = True
                    payloads = decoder.flush()
                for payload in payloads:
                    events += 1
                    if matches(payload):
                        ev = token_event
                    else:
                        ev = interpret(payload)
                        if ev is token_event and not template.learnt:
                            template.learn(payload)
                    if ev is token_event or ev.has_token:
                        if last < 0.0:
                            record.ttft_s = t - start
                        else:
                            append_gap(t - last)
                        last = t
                        flight.last = clock()
                        n_chunks += 1
                        if ev is token_event:
                            continue
                    if ev.finish_reason is not None:
                        finish = ev.finish_reason
                    if ev.usage is not None:
                        usage = ev.usage
                    if ev.done:
                        done = True
                        break
                    if ev.error is not None:
                        _count(record, n_chunks, usage, finish)
                        record.fail("protocol_error",
                                    self._redact(f"protocol_error: {ev.error}"), t)
                        return
                if done or eof:
                    break
        except BaseException:
            _count(record, n_chunks, usage, finish)  # keep what was measured
            raise
        record.end_s = t
        _count(record, n_chunks, usage, finish)
        _judge(record, done, events, resp)
        if done and not eof:
            # Read the rest (the chunked-encoding end) so the connection is reused; the
            # answer is complete, so a failure here changes nothing.
            flight.task = None  # out of the deadline watch's reach
            try:
                while await readany():
                    pass
            except (aiohttp.ClientError, OSError, ValueError):
                pass

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def _failure(self, exc: BaseException, record: RequestRecord) -> tuple[str, str]:
        """The outcome and message of a connection failure: before any answer it is a
        ``connect_error`` (refused, reset, unreachable) unless the server closed the
        connection cleanly without answering; after the answer began, a
        ``protocol_error``."""
        text = _exc_text(exc)
        if record.status is None:
            if isinstance(exc, aiohttp.ServerDisconnectedError | ServerClosed):
                return "protocol_error", self._redact(
                    f"protocol_error: the server closed the connection without answering "
                    f"({text})")
            return "connect_error", self._redact(f"connect_error: {text}")
        return "protocol_error", self._redact(
            f"protocol_error: the connection failed mid-answer ({text})")


def _exc_text(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _judge(record: RequestRecord, done: bool, events: int, resp: Any) -> None:
    """The outcome of a stream that was read to its end (``[DONE]`` or end of body)."""
    if not done and record.finish_reason is None:
        if events == 0:
            content_type = resp.headers.get("Content-Type", "?")
            why = f"no server-sent event in the body (Content-Type {content_type})"
        else:
            why = (f"the stream ended before [DONE] and before a finish_reason, after "
                   f"{record.output_tokens} tokens")
        record.outcome, record.error = "protocol_error", f"protocol_error: {why}"
    elif record.output_tokens < record.min_tokens:
        record.outcome = "incomplete"
        record.error = (f"incomplete: {record.output_tokens} of {record.min_tokens} tokens "
                        f"asked for (finish_reason {record.finish_reason!r})")
    else:
        record.outcome = "ok"


_ZEROS = memoryview(bytes(8 * 1024))


def _zero_gaps(gaps: array[float], n: int) -> None:
    """Append ``n`` zero gaps (token chunks that arrived in the same buffer)."""
    while n > 0:
        m = min(n, 1024)
        gaps.frombytes(_ZEROS[: 8 * m])
        n -= m


def _split(template: TokenTemplate, region: bytes) -> tuple[int, list[bytes]]:
    """Split a region of complete events: ``(k, payloads)`` where ``k`` leading events
    are token chunks recognised in bulk by ``template`` and ``payloads`` are the rest,
    to read one by one. A template not learnt yet is learnt from the first token chunk,
    after up to :data:`_MAX_LEADING` leading events that say nothing (the chat role
    chunk: no token, finish, usage or error); those come back as empty payloads (read
    as :data:`~pytest_ctxplat.driver.sse.EMPTY_EVENT`, so they still count as events)."""
    if template.learnt:
        k, rest = template.scan(region)
        if k == 0:
            return 0, split_region(region)
        return k, split_region(region[rest:]) if rest < len(region) else []
    start = skipped = 0
    while True:
        end = region.find(b"\n\n", start)
        if end < 0:
            return 0, split_region(region)
        head = split_region(region[start:end])
        if len(head) != 1:
            return 0, split_region(region)
        event = interpret_payload(head[0])
        if event is TOKEN_EVENT:
            break
        if event is not EMPTY_EVENT or skipped == _MAX_LEADING:
            return 0, split_region(region)
        skipped += 1
        start = end + 2
    empties = [b""] * skipped
    if not template.learn(head[0]):
        return 1, empties + split_region(region[end + 2 :])
    k, rest = template.scan(region, end + 2)
    if k == 0:
        return 1, empties + split_region(region[end + 2 :])
    return k + 1, empties + split_region(region[rest:]) if rest < len(region) else empties


_MAX_LEADING = 4  # events before a stream's first token chunk skipped to learn it


def _count(record: RequestRecord, n_chunks: int, usage: StreamUsage | None,
           finish: str | None) -> None:
    """Write the token counts (``usage`` wins over counted chunks) and the finish
    reason."""
    record.finish_reason = finish
    if usage is not None:
        completion = usage.completion_tokens
        record.output_tokens = completion if completion is not None else n_chunks
        record.cached_tokens = usage.cached_tokens
        record.usage_prompt_tokens = usage.prompt_tokens
        if usage.model_ms is not None:
            record.set_model_ms(*usage.model_ms)
    else:
        record.output_tokens = n_chunks


async def _read_head(content: Any, limit: int,
                     secrets: tuple[str, ...]) -> str:
    """Up to ``limit`` bytes of a body, as one line of text with ``secrets`` redacted
    (before it is cut, so no part of one is left), cut at 200 characters."""
    buf = b""
    try:
        while len(buf) < limit:
            data = await content.readany()
            if not data:
                break
            buf += data
    except (aiohttp.ClientError, TimeoutError, OSError):
        pass
    text = redact(" ".join(buf[:limit].decode("utf-8", "replace").split()), secrets)
    if len(text) > _ERROR_BODY_CHARS:
        text = text[:_ERROR_BODY_CHARS] + "..."
    return text or "(empty body)"
