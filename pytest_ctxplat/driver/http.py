"""The driver's HTTP client: streamed OpenAI-compatible requests, measured.

:class:`StreamClient` is the only place the driver touches an HTTP library. It posts an
already-encoded JSON body, reads the server-sent events as the socket delivers them and
fills a :class:`~pytest_ctxplat.report.records.RequestRecord`: start, time to first token,
gaps between token chunks, end, output and cached tokens, HTTP status and error.

It uses aiohttp directly: on a small machine a plain httpx stream reaches a few hundred
requests per second where a minimal aiohttp client reaches thousands, and the client must
not be what limits a load test. Control-plane calls (probe, reset, /metrics) go through
httpx in the orchestrator and the server backends: one library per job.

Token chunks are not parsed as JSON one by one: the first one of a stream is, and
becomes a :class:`~pytest_ctxplat.driver.sse.TokenTemplate`; the token chunks of each
received buffer are then counted in bulk from their bytes, and only the chunks of another
shape (finish reason, usage, errors, ``[DONE]``) are parsed. See ``docs/performance.md``.

Failures never raise out of :meth:`StreamClient.stream`; they are written into the record
(``error``), keeping what was measured until then. Only cancellation propagates.
"""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType

import aiohttp
from yarl import URL

from pytest_ctxplat.driver.sse import (
    TOKEN_EVENT,
    SSEDecoder,
    StreamUsage,
    TokenTemplate,
    interpret_payload,
    split_region,
)
from pytest_ctxplat.errors import ConfigError, DriverError
from pytest_ctxplat.report.records import RequestRecord

__all__ = ["ClientLimits", "StreamClient"]

_ERROR_BODY_CHARS = 200
_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "api-key", "x-api-key", "cookie"}
)


@dataclass(frozen=True, kw_only=True)
class ClientLimits:
    """Connection pool size and timeouts of a :class:`StreamClient`.

    ``max_connections``: most open connections (0: no limit; the runner sizes it to its
    concurrency). ``connect_timeout_s``: to open a TCP connection.
    ``read_timeout_s``: longest silence between two received buffers.
    ``total_timeout_s``: whole request, from send to the end of the body (``None``: none).
    """

    max_connections: int = 0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 300.0
    total_timeout_s: float | None = None

    def __post_init__(self) -> None:
        mc = self.max_connections
        if isinstance(mc, bool) or not isinstance(mc, int) or mc < 0:
            raise ConfigError(
                f"ClientLimits.max_connections must be an integer >= 0 (0: no limit), got {mc!r}"
            )
        for name in ("connect_timeout_s", "read_timeout_s", "total_timeout_s"):
            value = getattr(self, name)
            if value is None and name == "total_timeout_s":
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not value > 0
                or value == float("inf")
            ):
                allowed = (
                    "a finite number > 0 or None"
                    if name == "total_timeout_s"
                    else ("a finite number > 0")
                )
                raise ConfigError(f"ClientLimits.{name} must be {allowed}, got {value!r}")


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def _describe(exc: BaseException, limits: ClientLimits) -> str:
    name = type(exc).__name__
    message = str(exc)
    if not message and isinstance(exc, TimeoutError):
        message = (
            f"no reply within total_timeout_s={limits.total_timeout_s}"
            if limits.total_timeout_s is not None
            else f"read_timeout_s={limits.read_timeout_s} or "
            f"connect_timeout_s={limits.connect_timeout_s} exceeded"
        )
    return f"{name}: {message}" if message else name


class StreamClient:
    """Streams OpenAI-compatible requests over one pooled aiohttp session.

    Use as an async context manager (or call :meth:`aclose`)::

        async with StreamClient("http://127.0.0.1:8000", headers=auth) as client:
            await client.stream("/v1/completions", body, record, loop.time)

    Connections are kept alive and reused across requests. ``headers`` (for example
    ``Authorization``) go with every request; their secret values never appear in
    recorded errors.
    """

    def __init__(
        self,
        base_url: str,
        *,
        limits: ClientLimits = ClientLimits(),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"StreamClient base_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.limits = limits
        self._headers: dict[str, str] = dict(headers or {})
        secrets: list[str] = []
        for key, value in self._headers.items():
            if key.lower() in _SECRET_HEADERS and value:
                secrets.append(value)
                scheme, _, token = value.partition(" ")
                if token and scheme.lower() in ("bearer", "basic", "token"):
                    secrets.append(token)
        # Longest first, so a token inside a full header value is not half-replaced.
        self._secrets = tuple(sorted(set(secrets), key=len, reverse=True))
        self._session: aiohttp.ClientSession | None = None
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
        if self._session is not None:
            return
        limits = self.limits
        connector = aiohttp.TCPConnector(
            limit=limits.max_connections,
            limit_per_host=limits.max_connections,
            keepalive_timeout=75.0,
            ttl_dns_cache=300,
        )
        timeout = aiohttp.ClientTimeout(
            total=limits.total_timeout_s,
            sock_connect=limits.connect_timeout_s,
            sock_read=limits.read_timeout_s,
        )
        headers = {"Accept-Encoding": "identity", **self._headers}
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers=headers,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            raise_for_status=False,
        )

    async def aclose(self) -> None:
        """Close the session and its connections."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def closed(self) -> bool:
        return self._session is None

    def _url(self, path: str) -> URL:
        url = self._urls.get(path)
        if url is None:
            sep = "" if path.startswith("/") else "/"
            url = self._urls[path] = URL(self.base_url + sep + path)
        return url

    def _require_session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            raise DriverError("StreamClient is not open: use 'async with StreamClient(...)'")
        return session

    # -- the hot path ------------------------------------------------------------------

    async def stream(
        self, path: str, body: bytes, record: RequestRecord, now: Callable[[], float]
    ) -> None:
        """POST ``body`` (encoded JSON) to ``path`` and measure the streamed answer.

        Fills ``record``: ``start_s`` (just before sending), ``status``, ``ttft_s`` (first
        chunk carrying a token, relative to ``start_s``), ``chunk_gaps_s`` (between
        consecutive token chunks; chunks arriving in one buffer share its time),
        ``output_tokens`` (``usage.completion_tokens``, else the token chunks counted),
        ``cached_tokens`` and ``usage_prompt_tokens`` (from ``usage``), ``end_s`` (at
        ``[DONE]``, or at the end of the body). Never raises except for cancellation;
        failures set ``error`` and ``end_s`` and keep the partial measurements.
        """
        # hot path: one function on purpose. Locals hold bound methods and the loop reads
        # each received buffer once; splitting it into calls costs measurable client CPU
        # per request (docs/performance.md, benchmarks/bench_client_overhead.py).
        session = self._require_session()
        url = self._url(path)
        record.start_s = start = now()
        done = False
        n_chunks = 0
        usage: StreamUsage | None = None
        try:
            async with session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                status = record.status = resp.status
                if status >= 400:
                    text = await _read_head(resp.content, _ERROR_BODY_CHARS * 4)
                    record.end_s = now()
                    record.error = _redact(f"HTTP {status}: {text}", self._secrets)
                    return
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
                last = -1.0
                eof = False
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
                            n_chunks += k
                    else:
                        # End of body: a last event may lack its blank line.
                        eof = True
                        payloads = decoder.flush()
                    for payload in payloads:
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
                            n_chunks += 1
                            if ev is token_event:
                                continue
                        if ev.usage is not None:
                            usage = ev.usage
                        if ev.done:
                            done = True
                            record.end_s = t
                            break
                        if ev.error is not None:
                            _finish(record, n_chunks, usage)
                            record.end_s = t
                            record.error = _redact(f"stream error: {ev.error}", self._secrets)
                            return
                    if done or eof:
                        break
                if not done:
                    record.end_s = t
                    if n_chunks == 0:
                        _finish(record, n_chunks, usage)
                        ctype = resp.headers.get("Content-Type", "?")
                        record.error = (
                            "IncompleteStream: body ended without [DONE] and without any "
                            f"token (Content-Type {ctype})"
                        )
                        return
                elif not eof:
                    # Read the rest (the chunked-encoding end) so the connection is reused.
                    while await readany():
                        pass
            _finish(record, n_chunks, usage)
        except asyncio.CancelledError:
            _finish(record, n_chunks, usage)
            if record.end_s is None:
                record.end_s = now()
            if record.error is None:
                record.error = "cancelled"
            raise
        except Exception as exc:
            _finish(record, n_chunks, usage)
            if done:
                return  # [DONE] was seen: a failure while draining does not matter
            record.end_s = now()
            record.error = _redact(_describe(exc, self.limits), self._secrets)


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
    to read one by one. A template not learnt yet is learnt from the first event."""
    if template.learnt:
        k, rest = template.scan(region)
    else:
        end = region.find(b"\n\n")
        if end < 0:
            return 0, split_region(region)
        head = split_region(region[:end])
        if len(head) != 1 or interpret_payload(head[0]) is not TOKEN_EVENT:
            return 0, split_region(region)
        if not template.learn(head[0]):
            return 1, split_region(region[end + 2 :])
        k, rest = template.scan(region, end + 2)
        if k == 0:
            return 1, split_region(region[end + 2 :])
        k += 1
    if k == 0:
        return 0, split_region(region)
    return k, split_region(region[rest:]) if rest < len(region) else []


def _finish(record: RequestRecord, n_chunks: int, usage: StreamUsage | None) -> None:
    """Write the token counts: ``usage`` wins over counted chunks."""
    if usage is not None:
        completion = usage.completion_tokens
        record.output_tokens = completion if completion is not None else n_chunks
        record.cached_tokens = usage.cached_tokens
        record.usage_prompt_tokens = usage.prompt_tokens
    else:
        record.output_tokens = n_chunks


async def _read_head(content: aiohttp.StreamReader, limit: int) -> str:
    """Up to ``limit`` bytes of a body, as one line of text, cut at 200 characters."""
    buf = b""
    try:
        while len(buf) < limit:
            data = await content.readany()
            if not data:
                break
            buf += data
    except (aiohttp.ClientError, TimeoutError):
        pass
    text = " ".join(buf[:limit].decode("utf-8", "replace").split())
    if len(text) > _ERROR_BODY_CHARS:
        text = text[:_ERROR_BODY_CHARS] + "..."
    return text or "(empty body)"
