"""The session runner: plays a workload's sessions against a streaming client.

Each user is one task that walks its sessions step by step: wait the step's delay, send
the request, wait for it to finish (closed loop). All times come from the event loop's
clock, so the runner works in real time and on a virtual clock alike. Bounds
(``duration_s``, ``max_requests``) stop new requests; requests in flight finish, up to a
grace period after which they are cancelled and recorded as such.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import orjson

from ..workload.model import DesignedCache, RequestPlan
from ..workload.spec import WorkloadContext, WorkloadSpec
from ..workload.tokens import TokenSpace, render_words
from .records import RequestRecord

__all__ = ["HttpSink", "OutgoingRequest", "RequestSink", "RunOptions", "Runner",
           "StreamingClient"]


class StreamingClient(Protocol):
    """An HTTP streaming client (``driver.http.StreamClient``)."""

    async def stream(
        self, path: str, body: bytes, record: RequestRecord, now: Callable[[], float]
    ) -> None: ...


class RequestSink(Protocol):
    """Where the runner sends requests. ``submit`` fills ``record`` like
    ``StreamClient.stream`` does and never raises except for cancellation. An in-process
    sink (the simulator on a virtual clock) can read ``request.tokens()`` directly and
    skip JSON."""

    async def submit(
        self, request: OutgoingRequest, record: RequestRecord, now: Callable[[], float]
    ) -> None: ...


class OutgoingRequest:
    """One request as the runner built it: the plan, its token ids, its JSON body.
    Tokens and body are computed on first use only."""

    __slots__ = ("_body", "_tokens", "path", "plan", "runner")

    def __init__(self, runner: Runner, plan: RequestPlan, path: str) -> None:
        self.runner = runner
        self.plan = plan
        self.path = path
        self._tokens: npt.NDArray[np.int64] | None = None
        self._body: bytes | None = None

    def tokens(self) -> npt.NDArray[np.int64]:
        if self._tokens is None:
            p = self.plan
            self._tokens = self.runner.token_space.tokens(p.blocks, p.tail_id, p.tail_len)
        return self._tokens

    def body(self) -> bytes:
        if self._body is None:
            self._body = self.runner.render_body(self.plan, self.tokens())
        return self._body


class HttpSink:
    """Adapts a :class:`StreamingClient` to :class:`RequestSink`."""

    __slots__ = ("client",)

    def __init__(self, client: StreamingClient) -> None:
        self.client = client

    async def submit(
        self, request: OutgoingRequest, record: RequestRecord, now: Callable[[], float]
    ) -> None:
        await self.client.stream(request.path, request.body(), record, now)


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How requests are rendered and bounded.

    ``token_salt`` changes every token of the run without changing its structure, so a
    warm cache from an earlier run of the same workload cannot serve hits.
    ``time_scale`` is model seconds per loop second: against a simulator running
    ``speedup`` times faster than model time, set it to ``speedup`` and every recorded
    time, delay and bound is in model time.
    """

    model: str
    seed: int = 0
    token_salt: int = 0
    server_block_size: int = 1
    ignore_eos: bool = True
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    grace_s: float = 120.0
    time_scale: float = 1.0
    token_min: int = 100
    token_max: int = 4096


class Runner:
    """Plays ``workload`` through ``client``; ``records`` fills in as requests complete,
    so whatever was measured survives an interruption."""

    def __init__(self, workload: WorkloadSpec, sink: RequestSink | StreamingClient,
                 options: RunOptions):
        self.workload = workload
        self.sink: RequestSink = (
            HttpSink(sink) if not hasattr(sink, "submit") else sink  # type: ignore[assignment]
        )
        self.options = options
        self.records: list[RequestRecord] = []
        self.in_flight = 0
        self.started = 0
        self.token_space = TokenSpace(
            workload.block_size,
            seed=options.seed * 1_000_003 + options.token_salt,
            token_min=options.token_min,
            token_max=options.token_max,
        )
        self._designed = DesignedCache(options.server_block_size)
        self._stop = asyncio.Event()
        self._scale = options.time_scale
        self._t0 = 0.0
        self._deadline = math.inf
        self._path = "/v1/chat/completions" if workload.api == "chat" else "/v1/completions"

    def now(self) -> float:
        """Model time since the run started."""
        return (asyncio.get_running_loop().time() - self._t0) * self._scale

    def stop(self) -> None:
        """Stop starting new requests (e.g. on an external signal)."""
        self._stop.set()

    async def run(self) -> list[RequestRecord]:
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        wl = self.workload
        if wl.duration_s is not None:
            self._deadline = wl.duration_s
        ctx = WorkloadContext(seed=self.options.seed)
        tasks = [asyncio.create_task(self._user(u, ctx)) for u in range(wl.users)]
        try:
            done, pending = await asyncio.wait(
                tasks,
                timeout=None
                if math.isinf(self._deadline)
                else self._deadline + self.options.grace_s,
            )
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for t in done:
                exc = t.exception()
                if exc is not None:
                    raise exc
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return self.records

    def _may_send(self) -> bool:
        if self._stop.is_set() or self.now() >= self._deadline:
            return False
        cap = self.workload.max_requests
        return cap is None or self.started < cap

    async def _sleep(self, delay: float) -> bool:
        """Sleep ``delay`` but not past the deadline or a stop; False if the run is over."""
        if delay > 0:
            remaining = self._deadline - self.now()
            if remaining <= 0:
                return False
            stop_wait = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait([stop_wait], timeout=min(delay, remaining) / self._scale)
            finally:
                stop_wait.cancel()
        return self._may_send()

    async def _user(self, user: int, ctx: WorkloadContext) -> None:
        for session in self.workload.user_sessions(user, ctx):
            for index, plan in enumerate(session.steps):
                if not await self._sleep(plan.delay_s):
                    return
                await self._send(user, session.session_id, index, plan)

    def render_body(self, plan: RequestPlan, tokens: npt.NDArray[np.int64]) -> bytes:
        payload: dict[str, Any] = {
            "model": self.options.model,
            "max_tokens": plan.output_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0.0,
        }
        if self.options.ignore_eos:
            payload["ignore_eos"] = True
        if self.workload.api == "chat":
            payload["messages"] = [{"role": "user", "content": render_words(tokens)}]
        else:
            payload["prompt"] = tokens
        payload.update(self.options.extra_body)
        return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)

    async def _send(self, user: int, session_id: str, index: int, plan: RequestPlan) -> None:
        self.started += 1
        request = OutgoingRequest(self, plan, self._path)
        record = RequestRecord(
            session_id=session_id,
            user=user,
            index=index,
            prompt_tokens=plan.prompt_tokens,
            max_tokens=plan.output_tokens,
            designed_cached_tokens=self._designed.observe(plan),
        )
        self.records.append(record)
        self.in_flight += 1
        try:
            await self.sink.submit(request, record, self.now)
        finally:
            self.in_flight -= 1
