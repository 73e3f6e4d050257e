"""The HTTP target: any OpenAI-compatible server, reached through a
:class:`~pytest_ctxplat.servers.base.ServerHandle` (the simulator, vLLM, a URL).

Control-plane calls (model list, capability probe, cache reset, ``/metrics``,
``/tokenize``) go through httpx; the streamed requests through the driver's aiohttp
client, the measured hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any

import httpx

from ..driver.http import StreamClient
from ..driver.limits import DEFAULT_LIMITS, ClientLimits
from ..driver.runner import HttpSink, RequestSink
from ..servers.base import ServerHandle
from ..servers.probe import ProbeLimits, ensure_capabilities
from ..servers.scrape import MetricsSnapshot, scrape, scrape_all
from ..workload.render import probe_chat_tokenizer
from ..workload.spec import WorkloadSpec
from .core import GAUGES, TIMELINE_COUNTERS, Preparation

__all__ = ["HttpTarget", "check_server", "probe_limits"]

FINAL_SCRAPE_TIMEOUT_S = 5.0


class HttpTarget:
    """Plays against the server behind ``handle``.

    ``model`` overrides the model name sent (default: the handle's, else the first from
    ``/v1/models``). ``reset_cache`` posts ``/reset_prefix_cache`` before the run (a
    ``reset_cache`` set on the handle, e.g. by a server profile, wins). ``time_scale``
    is model seconds per real second (default: the handle's ``info.time_scale``, the
    simulator's speed-up).
    """

    def __init__(self, handle: ServerHandle, *, model: str | None = None,
                 reset_cache: bool = True, time_scale: float | None = None,
                 limits: ClientLimits | None = None) -> None:
        self.handle = handle
        self.model = model
        self.reset_cache = reset_cache if handle.reset_cache is None else handle.reset_cache
        self.time_scale = handle.info.time_scale if time_scale is None else time_scale
        self.limits = limits or DEFAULT_LIMITS
        self._control: httpx.AsyncClient | None = None
        self._client: StreamClient | None = None
        self._sink: HttpSink | None = None

    @property
    def url(self) -> str:
        return self.handle.url

    @property
    def sink(self) -> RequestSink:
        assert self._sink is not None, "prepare() first"
        return self._sink

    async def __aenter__(self) -> HttpTarget:
        headers = self.handle.headers()
        self._control = httpx.AsyncClient(headers=headers)
        self._client = StreamClient(self.url, limits=self.limits, headers=headers)
        await self._client.open()
        self._sink = HttpSink(self._client)
        return self

    async def __aexit__(self, *exc: object) -> None:
        client, control = self._client, self._control
        self._client = self._control = None
        try:
            if client is not None:
                await client.aclose()
        finally:
            if control is not None:
                await control.aclose()

    def _http(self) -> httpx.AsyncClient:
        assert self._control is not None, "use 'async with HttpTarget(...)'"
        return self._control

    async def prepare(self, spec: WorkloadSpec, *, seed: int, token_salt: int) -> Preparation:
        control = self._http()
        url = self.url
        notes: dict[str, str] = {}
        model = (self.model or self.handle.info.model or await _first_model(control, url)
                 or "default")
        caps = await ensure_capabilities(self.handle, control, model, probe_limits(self.limits))
        notes.update(caps.run_notes())
        if spec.api == "completions" and caps.token_id_prompts is False and caps.chat:
            spec = dataclasses.replace(spec, api="chat")
            notes["prompts"] = ("probe: the server refused token-id prompts on "
                                "/v1/completions; sent chat text instead, so block boundaries "
                                "depend on its tokenizer")
        if self.reset_cache:
            with contextlib.suppress(httpx.HTTPError):
                resp = await control.post(url + "/reset_prefix_cache", timeout=30.0)
                if resp.status_code >= 400:
                    notes["reset_prefix_cache"] = f"HTTP {resp.status_code}"
                elif _refused(resp):
                    notes["reset_prefix_cache"] = (f"HTTP {resp.status_code} but "
                                                   '{"success": false}: the cache was not '
                                                   "reset (blocks held by requests?)")
        chat_overhead = 0
        if spec.api == "chat":
            chat_overhead, chat_notes = await probe_chat_tokenizer(control, url, model)
            notes.update(chat_notes)
        return Preparation(spec=spec, model=model, time_scale=self.time_scale,
                           chat_overhead_tokens=chat_overhead, notes=notes)

    async def snapshot(self, *, final: bool = False) -> MetricsSnapshot | None:
        extra = tuple(self.handle.info.settings.get("metrics_urls", ()))
        if not final:
            return await scrape_all(self._http(), self.url, extra)
        try:
            return await asyncio.wait_for(scrape_all(self._http(), self.url, extra),
                                          FINAL_SCRAPE_TIMEOUT_S)
        except (asyncio.TimeoutError, httpx.HTTPError):
            return None

    async def gauges(self) -> Mapping[str, float]:
        snap = await scrape(self._http(), self.url)
        if snap is None:
            return {}
        return {k: snap.get(k) for k in (*GAUGES, *TIMELINE_COUNTERS)}

    def alive(self) -> bool:
        return self.handle.alive()

    def describe(self) -> dict[str, Any]:
        out = self.handle.info.to_dict()
        caps = self.handle.capabilities
        alive = self.handle.alive()
        out.update(capabilities=caps.to_dict() if caps is not None else None,
                   alive_after_run=alive, log_tail=None if alive else self.handle.log_tail(),
                   diagnostics={})
        return out


def probe_limits(limits: ClientLimits) -> ProbeLimits:
    """The capability probe waits as the client would, at most its own bounds."""
    return ProbeLimits(connect_s=min(5.0, limits.connect_timeout_s),
                       answer_s=min(ProbeLimits().answer_s, limits.first_byte_timeout_s))


async def check_server(handle: ServerHandle, model: str | None = None,
                       limits: ClientLimits | None = None) -> None:
    """Probe ``handle`` now (once per handle): a :class:`~pytest_ctxplat.errors.ServerError`
    with the probe's findings when it is unreachable or has no usable endpoint."""
    if handle.capabilities is not None:
        return  # probed already, or known (the simulator)
    async with httpx.AsyncClient(headers=handle.headers()) as control:
        name = model or handle.info.model or await _first_model(control, handle.url)
        await ensure_capabilities(handle, control, name or "default",
                                  probe_limits(limits or DEFAULT_LIMITS))


def _refused(resp: httpx.Response) -> bool:
    """Whether a reset answered HTTP 200 with ``{"success": false}`` (vLLM does)."""
    try:
        body = resp.json() if resp.content else None
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("success") is False


async def _first_model(client: httpx.AsyncClient, url: str) -> str | None:
    try:
        resp = await client.get(url + "/v1/models", timeout=5.0)
        data = resp.json()["data"]
        return str(data[0]["id"]) if data else None
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
        return None

