"""The session runner: plays a workload's sessions against a streaming client.

Each user is one task that walks its sessions step by step: wait the step's delay, send
the request, wait for it to finish (closed loop). A spawn step starts subagent sessions
as concurrent tasks and waits for them. The workload's ``load`` shapes who may send:
users ramped in or staged over time, open-loop session arrivals (Poisson or gamma), and
per-user token budgets with backoff; or the SLO-governed controller
(:mod:`~pytest_ctxplat.driver.controller`) sets how many users may send. Trace replay
with original timestamps sends each request at its own time instead.

All times come from the event loop's clock, so the runner works in real time and on a
virtual clock alike. Bounds (``duration_s`` or the stages' length, ``max_requests``)
stop new requests; requests in flight finish, up to a grace period after which they are
cancelled and recorded as such.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import orjson

from ..report.records import RequestRecord
from ..slo import SLOSpec
from ..workload.load import TokenBudget
from ..workload.model import DesignedCache, RequestPlan, SessionPlan, SpawnStep, TimedRequest
from ..workload.render import render_messages
from ..workload.spec import WorkloadContext, WorkloadSpec
from ..workload.tokens import TokenSpace
from .body import BodyBuilder
from .budget import RequestBudget
from .controller import CapacitySearch, controller_config, govern

__all__ = ["HttpSink", "OutgoingRequest", "RequestSink", "RunOptions", "Runner",
           "StreamingClient"]


class StreamingClient(Protocol):
    """An HTTP streaming client (``driver.http.StreamClient``): ``request`` sends one
    request (retrying throttled ones where its limits say so) and fills the record."""

    async def request(
        self, path: str, body: bytes, record: RequestRecord, now: Callable[[], float]
    ) -> None: ...


class RequestSink(Protocol):
    """Where the runner sends requests. ``submit`` fills ``record`` like
    ``StreamClient.stream`` does and never raises except for cancellation. An in-process
    sink (the simulator on a virtual clock) can read ``request.tokens()`` directly and
    skip JSON."""

    def submit(
        self, request: OutgoingRequest, record: RequestRecord, now: Callable[[], float]
    ) -> Awaitable[None]: ...


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
            self._body = self.runner.bodies.body(self.plan)
        return self._body


class HttpSink:
    """Adapts a :class:`StreamingClient` to :class:`RequestSink`."""

    __slots__ = ("client",)

    def __init__(self, client: StreamingClient) -> None:
        self.client = client

    def submit(
        self, request: OutgoingRequest, record: RequestRecord, now: Callable[[], float]
    ) -> Awaitable[None]:
        # the client's own coroutine, not one wrapped in another: a coroutine layer less
        # per request on the hot path
        return self.client.request(request.path, request.body(), record, now)


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How requests are rendered and bounded.

    ``token_salt`` changes every token of the run without changing its structure, so a
    warm cache from an earlier run of the same workload cannot serve hits.
    ``time_scale`` is model seconds per loop second: against a simulator running
    ``speedup`` times faster than model time, set it to ``speedup`` and every recorded
    time, delay and bound is in model time. ``chat_overhead_tokens`` is the chat
    template's tokens per message (see :mod:`~pytest_ctxplat.workload.render`).
    ``grace_s`` is how long requests in flight at the run's bound may finish (in model
    seconds) before they are cancelled. ``slo`` is what the SLO-governed controller
    judges (the workload's ``load.controller``, or implied by ``min_sustained_users``).
    After ``max_connect_failures`` connection failures in a row the run stops (a circuit
    breaker; 0: never). ``part`` ``(i, n)``: play only users ``u`` with ``u % n == i``,
    with block ids of part ``i``'s own range (one part of a split run). ``budget``: draw
    the requests from a pool shared with the run's other worker processes instead of
    bounding them by ``max_requests`` (:mod:`~pytest_ctxplat.driver.budget`).
    """

    model: str
    seed: int = 0
    token_salt: int = 0
    server_block_size: int = 1
    ignore_eos: bool = True
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    grace_s: float = 50.0
    max_connect_failures: int = 10
    time_scale: float = 1.0
    token_min: int = 100
    token_max: int = 4096
    chat_overhead_tokens: int = 0
    slo: SLOSpec | None = None
    part: tuple[int, int] = (0, 1)
    budget: RequestBudget | None = None


class Runner:
    """Plays ``workload`` through ``sink``; ``records`` fills in as requests complete,
    so whatever was measured survives an interruption. ``in_flight`` and ``completed``
    count requests sent and not yet ended, and ended. ``designed_variants`` holds, per
    TTL / capacity variant of the designed cache, the designed cached tokens of each
    record (same order as ``records``). ``capacity`` is the SLO-governed controller's
    search (None: the run has none)."""

    def __init__(self, workload: WorkloadSpec, sink: RequestSink | StreamingClient,
                 options: RunOptions):
        self.workload = workload
        self.sink: RequestSink = (
            HttpSink(sink) if not hasattr(sink, "submit") else sink  # type: ignore[assignment]
        )
        self.options = options
        self.records: list[RequestRecord] = []
        self.in_flight = 0
        self.completed = 0
        self.stop_reason: str | None = None
        self._connect_failures = 0
        self._detached: set[asyncio.Task[bool]] = set()  # subagents nobody waits for
        self.started = 0
        self._budget = options.budget
        self._allowed: float = (0 if self._budget is not None else  # requests it may start
                                math.inf if workload.max_requests is None
                                else workload.max_requests)
        self.throttled = 0
        self.token_space = TokenSpace(
            workload.block_size,
            seed=options.seed * 1_000_003 + options.token_salt,
            token_min=options.token_min,
            token_max=options.token_max,
        )
        self.bodies = BodyBuilder(self.token_space, chat=workload.api == "chat",
                                  overhead=options.chat_overhead_tokens,
                                  payload=self._payload, plain=self._plain_body)
        sbs = options.server_block_size
        self._designed = DesignedCache(sbs)
        self._variants = [DesignedCache(sbs, ttl_s=t) for t in workload.designed_ttl_s] + [
            DesignedCache(sbs, capacity_tokens=c) for c in workload.designed_capacity_tokens]
        self.designed_variants: dict[str, list[int]] = {v.label: [] for v in self._variants}
        self._stop = asyncio.Event()
        self._scale = options.time_scale
        self._t0 = 0.0
        self._clock: Callable[[], float] = _loop_time  # the loop's clock, once running
        self._deadline = math.inf
        self._path = "/v1/chat/completions" if workload.api == "chat" else "/v1/completions"
        self._budgets: dict[int, TokenBudget] = {}
        config = controller_config(workload, options.slo)
        self.capacity = CapacitySearch(config) if config is not None else None
        self._active = 0  # with a controller: the users that may send
        self._gate = asyncio.Event()  # set (and replaced) when _active changes
        self._ended: set[int] = set()  # users whose task ended

    def now(self) -> float:
        """Model time since the run started."""
        return (self._clock() - self._t0) * self._scale

    def stop(self, reason: str | None = None) -> None:
        """Stop starting new requests (e.g. on an external signal); ``reason`` says why
        the run ended early (the result reports it)."""
        if reason is not None and self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()
        self._gate.set()

    async def run(self) -> list[RequestRecord]:
        loop = asyncio.get_running_loop()
        wl = self.workload
        bound = wl.bound_s
        if bound is not None:
            self._deadline = bound
        part, parts = self.options.part
        ctx = WorkloadContext.for_part(self.options.seed, part) if parts > 1 else \
            WorkloadContext(seed=self.options.seed)
        wl.prepare(ctx)
        timed = wl.timed_requests(ctx)
        self._clock = loop.time
        self._t0 = loop.time()
        if timed is not None:
            self.capacity = None  # a replay at the trace's own times: no users to govern
            tasks = [asyncio.create_task(self._timed(timed))]
        elif wl.load.open_loop:
            tasks = [asyncio.create_task(self._open_loop(ctx))]
        elif self.capacity is not None:
            tasks = self._governed(ctx, self.capacity)
        else:
            tasks = [asyncio.create_task(self._user(u, ctx))
                     for u in range(part, wl.user_count(), parts)]
        end = None if math.isinf(self._deadline) else \
            loop.time() + (self._deadline + self.options.grace_s) / self._scale
        try:
            await self._wait(set(tasks), end)
            while self._detached:  # subagents launched without waiting that outlive them
                await self._wait(set(self._detached), end)
        finally:
            rest = [*tasks, *self._detached]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
            if self._budget is not None:  # drawn and not sent: the other workers may
                self._budget.give_back(int(self._allowed) - self.started)
                self._allowed = self.started
        return self.records

    # -- SLO-governed closed loop ---------------------------------------------------------
    def _governed(self, ctx: WorkloadContext, search: CapacitySearch
                  ) -> list[asyncio.Task[Any]]:
        """User tasks up to ``max_users`` and the controller that gates them."""
        users = [asyncio.create_task(self._user(u, ctx))
                 for u in range(search.config.max_users)]
        for u, t in enumerate(users):
            t.add_done_callback(functools.partial(self._user_ended, u))
        return [*users, asyncio.create_task(govern(self, search, self.options.slo))]

    def _user_ended(self, user: int, _: asyncio.Task[None]) -> None:
        self._ended.add(user)

    def set_active(self, users: int) -> None:
        """Let the first ``users`` users send (the controller's decision)."""
        self._active = users
        gate, self._gate = self._gate, asyncio.Event()
        gate.set()

    def end_search(self) -> None:
        self._stop.set()
        self._gate.set()

    async def wait(self, seconds: float) -> str | None:
        """The controller's sleep: None, or why the run is over."""
        if await self._sleep(seconds):
            if self._active and len(self._ended) >= self._active and \
                    all(u in self._ended for u in range(self._active)):
                return "workload ended (the active users ran out of sessions)"
            return None
        if self.stop_reason is not None:
            return f"run stopped: {self.stop_reason}"
        if self.now() >= self._deadline:
            return "run bound (duration_s)"
        if self.started >= self._allowed and (self._budget is None or not self._budget.left):
            return "run bound (max_requests)"
        return "run stopped"

    async def _until_active(self, user: int) -> bool:
        """Wait while the controller keeps ``user`` inactive; False once the run is over."""
        while user >= self._active and self._may_send():
            await self._gate.wait()
        return self._may_send()

    async def _wait(self, tasks: set[asyncio.Task[Any]], end: float | None) -> None:
        """Wait for ``tasks`` until loop time ``end``: cancel what is left then, raise
        the first error of one that failed."""
        timeout = None if end is None else max(0.0, end - asyncio.get_running_loop().time())
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._detached -= tasks
        for t in done:
            exc = t.exception()
            if exc is not None:
                raise exc

    def _may_send(self) -> bool:
        if self._stop.is_set() or self.now() >= self._deadline:
            return False
        return self.started < self._allowed or self._draw()

    def _draw(self) -> bool:
        """Take more requests from the shared budget; False when none are left."""
        if self._budget is None:
            return False
        self._allowed += self._budget.draw()
        return self.started < self._allowed

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

    async def _sleep_until(self, t: float) -> bool:
        return await self._sleep(t - self.now())

    # -- closed loop --------------------------------------------------------------------
    async def _user(self, user: int, ctx: WorkloadContext) -> None:
        load = self.workload.load
        if not await self._sleep_until(load.start_time(user, self.workload.users)):
            return
        for session in self.workload.user_sessions(user, ctx):
            if not await self._play(user, session):
                return

    async def _play(self, user: int, session: SessionPlan,
                    arrival: float | None = None,
                    parent: tuple[str, float] | None = None) -> bool:
        """Walk one session's steps; False once the run is over. ``arrival``: when an
        open-loop session was due (a concurrency limit may have held it back);
        ``parent``: the spawning session's id and the spawn's time (a subagent)."""
        load = self.workload.load
        last: RequestRecord | None = None  # the session's previous request
        for index, step in enumerate(session.steps):
            if step.delay_s > 0:
                if not await self._sleep(step.delay_s):
                    return False
            elif not self._may_send():
                return False
            planned = self.now()  # when the plan wants the request sent
            if arrival is not None and index == 0:
                planned = min(planned, arrival + step.delay_s)
            if load.stages:
                t = self.now()
                nxt = load.next_active(user, t)
                if nxt > t and not await self._sleep_until(nxt):
                    return False
                planned = max(planned, nxt)
            if self.capacity is not None and user >= self._active:
                # an inactive user is not a queued request: its plan starts when let in
                if not await self._until_active(user):
                    return False
                planned = self.now()
            if isinstance(step, SpawnStep):
                await self._spawn(user, step, session.session_id)
                if not self._may_send():
                    return False
                continue
            if (load.input_tpm is not None or load.output_tpm is not None) and \
                    not await self._admit(user, step):
                return False
            last = await self._send(user, session.session_id, index, step, planned,
                                    last=last, parent=parent, final=False)
        if last is not None:  # the session ran to its end
            last.last_turn = True
        return True

    async def _spawn(self, user: int, step: SpawnStep, parent_id: str) -> None:
        spawned = (parent_id, self.now())
        children = [asyncio.create_task(self._play(user, c, parent=spawned))
                    for c in step.children]
        if not step.wait:  # the run waits for them (see run()), not the parent
            self._detached.update(children)
            return
        try:
            await asyncio.gather(*children)
        finally:
            for c in children:
                c.cancel()

    async def _admit(self, user: int, plan: RequestPlan) -> bool:
        """Wait until ``user``'s token budget admits ``plan`` (backing off, doubling)."""
        load = self.workload.load
        if load.input_tpm is None and load.output_tpm is None:
            return True
        budget = self._budgets.get(user)
        if budget is None:
            budget = self._budgets[user] = TokenBudget(load.input_tpm, load.output_tpm)
        backoff = load.backoff_s
        while not budget.admit(plan.prompt_tokens, self.now()):
            self.throttled += 1
            if not await self._sleep(backoff):
                return False
            backoff = min(2 * backoff, load.backoff_max_s)
        return True

    # -- open loop ----------------------------------------------------------------------
    async def _open_loop(self, ctx: WorkloadContext) -> None:
        load = self.workload.load
        rng = ctx.rng("arrivals")
        limit = asyncio.Semaphore(load.max_concurrency) if load.max_concurrency else None
        live: set[asyncio.Task[None]] = set()
        t = 0.0
        k = 0
        try:
            while True:
                t += load.interarrival(rng)
                if not await self._sleep_until(t):
                    break
                if limit is not None:
                    await limit.acquire()
                session = next(iter(self.workload.user_sessions(k, ctx)), None)
                if session is None:
                    break
                task = asyncio.create_task(self._arrival(k, session, limit, t))
                live.add(task)
                task.add_done_callback(live.discard)
                k += 1
            await asyncio.gather(*live)
        finally:
            for task in live:
                task.cancel()

    async def _arrival(self, user: int, session: SessionPlan,
                       limit: asyncio.Semaphore | None, arrival: float) -> None:
        try:
            await self._play(user, session, arrival)
        finally:
            if limit is not None:
                limit.release()

    # -- timed (trace replay, original timestamps) -------------------------------------
    async def _timed(self, timed: Iterator[TimedRequest]) -> None:
        live: set[asyncio.Task[None]] = set()
        sent: list[asyncio.Task[None]] = []
        try:
            for req in timed:
                if not await self._sleep_until(req.t_s):
                    break
                prev = sent[req.wait_for] if 0 <= req.wait_for < len(sent) else None
                if prev is not None and prev.done():
                    prev = None
                # _send records the request before its first await: without a wait on an
                # earlier request, the send order is the schedule's order
                task = asyncio.create_task(self._timed_send(req, prev))
                sent.append(task)
                live.add(task)
                task.add_done_callback(live.discard)
                await asyncio.sleep(0)
            await asyncio.gather(*live)
        finally:
            for task in live:
                task.cancel()

    async def _timed_send(self, req: TimedRequest, prev: asyncio.Task[None] | None) -> None:
        scheduled = req.t_s
        if prev is not None:  # the answer it waits for is due first: not queueing
            await asyncio.wait([prev])
            if not self._may_send():
                return
            scheduled = max(scheduled, self.now())
        await self._send(req.user, req.session_id, req.index, req.plan, scheduled)

    # -- requests -----------------------------------------------------------------------
    def render_body(self, plan: RequestPlan, tokens: npt.NDArray[np.int64]) -> bytes:
        """The body of ``plan`` (with its ``tokens``), encoded from the whole payload:
        the definition. Requests are sent with :attr:`bodies`' rendering of the same
        bytes (:class:`~pytest_ctxplat.driver.body.BodyBuilder`)."""
        if self.workload.api == "chat":
            prompt: Any = render_messages(plan, tokens, self.options.chat_overhead_tokens)
        else:
            prompt = tokens
        return orjson.dumps(self._payload(plan.output_tokens, prompt),
                            option=orjson.OPT_SERIALIZE_NUMPY)

    def _payload(self, max_tokens: int, prompt: Any) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.options.model,
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0.0,
        }
        if self.options.ignore_eos:
            payload["ignore_eos"] = True
        payload["messages" if self.workload.api == "chat" else "prompt"] = prompt
        payload.update(self.options.extra_body)
        return payload

    def _plain_body(self, plan: RequestPlan) -> bytes:
        p = plan
        return self.render_body(p, self.token_space.tokens(p.blocks, p.tail_id, p.tail_len))

    async def _send(self, user: int, session_id: str, index: int, plan: RequestPlan,
                    scheduled_s: float | None = None, *, last: RequestRecord | None = None,
                    parent: tuple[str, float] | None = None,
                    final: bool | None = None) -> RequestRecord:
        """Send one request and record it; ``last`` is the session's previous request
        (for ``gap_s``), ``parent`` the spawning session and spawn time of a subagent,
        ``final`` whether it is the session's last planned request (None: unknown)."""
        self.started += 1
        request = OutgoingRequest(self, plan, self._path)
        now = self.now()
        record = RequestRecord(
            session_id=session_id,
            user=user,
            index=index,
            prompt_tokens=plan.prompt_tokens,
            max_tokens=plan.output_tokens,
            min_tokens=self._min_tokens(plan.output_tokens),
            designed_cached_tokens=self._designed.observe(plan),
            scheduled_s=now if scheduled_s is None else scheduled_s,
            gap_s=None if last is None or last.end_s is None else max(0.0, now - last.end_s),
            parent_session_id=None if parent is None else parent[0],
            spawned_s=None if parent is None else parent[1],
            last_turn=final,
        )
        for v in self._variants:
            self.designed_variants[v.label].append(v.observe(plan, now))
        self.records.append(record)
        self.in_flight += 1
        try:
            await self.sink.submit(request, record, self.now)
        finally:
            self.in_flight -= 1
            self.completed += 1
            budget = self._budgets.get(user)
            if budget is not None:
                budget.charge_output(record.output_tokens, self.now())
            if record.outcome == "connect_error" or self._connect_failures:
                self._breaker(record)
        return record

    def _min_tokens(self, max_tokens: int) -> int:
        """Output tokens the request demands: all of them with ``ignore_eos``, else the
        body's ``min_tokens``."""
        if self.options.extra_body.get("ignore_eos", self.options.ignore_eos):
            return max_tokens
        asked = self.options.extra_body.get("min_tokens")
        return min(max_tokens, asked) if isinstance(asked, int) else 0

    def _breaker(self, record: RequestRecord) -> None:
        """The circuit breaker: stop after ``max_connect_failures`` in a row."""
        if record.outcome != "connect_error":
            self._connect_failures = 0
            return
        self._connect_failures += 1
        limit = self.options.max_connect_failures
        if limit and self._connect_failures >= limit:
            self.stop(f"circuit breaker: {self._connect_failures} connection failures in "
                      f"a row (last: {record.error})")


def _loop_time() -> float:
    return asyncio.get_running_loop().time()
