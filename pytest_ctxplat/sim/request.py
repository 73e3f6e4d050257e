"""One simulated request: its token sequence, scheduler state and output stream.

A :class:`Request` is the handle that :meth:`Engine.submit` returns. Iterate it
(``async for event in request``) to receive :class:`TokenEvent` objects; when the consumer
falls behind, pending tokens are merged into one event (as vLLM merges outputs into one
streamed chunk). Breaking out of the loop does not stop the request: call
:meth:`Request.abort` (or use :meth:`Engine.generate`, which does so on exit).
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pytest_ctxplat.errors import EngineStoppedError

__all__ = ["EngineStoppedError", "Request", "RequestState", "TokenEvent"]

_ids = itertools.count(1)


class RequestState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """Tokens produced for one request since the previous event.

    ``token_ids`` holds one id per engine step (several when the consumer lagged);
    ``num_generated`` counts all output tokens so far; ``finished`` is set on the last
    event; ``time`` is the engine clock when the newest token was produced.
    """

    token_ids: tuple[int, ...]
    prompt_tokens: int
    cached_tokens: int
    num_generated: int
    finished: bool
    finish_reason: str | None
    time: float


class Request:
    """A request inside the engine and the consumer's handle to its output."""

    def __init__(
        self,
        tokens: npt.NDArray[np.int64] | None,
        prompt_len: int,
        max_tokens: int,
        hashes: list[int],
        arrival_time: float,
        abort_cb: Callable[[Request], None],
        listener: Callable[[Request, float], None] | None = None,
    ) -> None:
        self.request_id = f"req-{next(_ids)}"
        # prompt followed by the (predetermined) output tokens
        self.tokens = tokens
        self.prompt_len = prompt_len
        self.max_tokens = max_tokens
        self.hashes = hashes
        self.arrival_time = arrival_time
        self.first_token_time: float | None = None
        self.finish_time: float | None = None
        # the engine's model clock (see RealClock.model_now) at arrival, first token, end
        self.model_arrival = 0.0
        self.model_first_token: float | None = None
        self.model_finish: float | None = None
        self.state = RequestState.WAITING
        self.cached_tokens: int | None = None  # set at first admission
        self.num_out = 0
        self.num_computed = 0
        self.num_registered = 0
        self.blocks: list[int] = []
        self.num_preemptions = 0
        # tokens whose KV came from a lower tier (at first admission); the time the
        # request's loads finish (it is not scheduled before)
        self.external_tokens = 0
        self.ready_at = 0.0
        # in-process consumers: called after every token instead of queueing an event
        self.listener = listener
        self.session_id: str | None = None
        self.remote_kv = False
        # free HBM blocks when admission last failed (-1: retry at once)
        self.blocked_at_free = -1
        self._abort_cb = abort_cb
        self._pending: list[int] = []
        self._last_time = arrival_time
        self._delivered_final = False
        self._error: BaseException | None = None
        self._signal = asyncio.Event()

    # -- engine side -----------------------------------------------------------------
    @property
    def all_len(self) -> int:
        """Tokens of the current sequence: prompt plus tokens generated so far."""
        return self.prompt_len + self.num_out

    def push_token(self, now: float) -> None:
        self.num_out += 1
        self._last_time = now
        if self.num_out >= self.max_tokens:
            self.state = RequestState.FINISHED
            self.finish_time = now
        if self.listener is not None:
            self.listener(self, now)
            return
        assert self.tokens is not None
        self._pending.append(int(self.tokens[self.prompt_len + self.num_out - 1]))
        self._signal.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self.state = RequestState.ABORTED
        self._signal.set()
        if self.listener is not None:
            self.listener(self, self._last_time)

    def model_times_ms(self) -> tuple[float | None, float | None]:
        """Model-time TTFT and end (from arrival) in milliseconds; None until known."""
        first, end = self.model_first_token, self.model_finish
        return (None if first is None else (first - self.model_arrival) * 1000.0,
                None if end is None else (end - self.model_arrival) * 1000.0)

    # -- consumer side ---------------------------------------------------------------
    @property
    def prompt_tokens(self) -> int:
        return self.prompt_len

    @property
    def finished(self) -> bool:
        return self.state is RequestState.FINISHED

    def abort(self) -> None:
        """Stop the request and release its KV blocks (no-op once finished)."""
        if self.state in (RequestState.WAITING, RequestState.RUNNING):
            self._abort_cb(self)
            self.state = RequestState.ABORTED
            self._signal.set()

    def __aiter__(self) -> Request:
        return self

    async def __anext__(self) -> TokenEvent:
        while not self._pending:
            if self._error is not None:
                raise self._error
            if self.state is RequestState.ABORTED or self._delivered_final:
                raise StopAsyncIteration
            self._signal.clear()
            await self._signal.wait()
        tokens = tuple(self._pending)
        self._pending.clear()
        final = self.state is RequestState.FINISHED and self.num_out >= self.max_tokens
        self._delivered_final = final
        return TokenEvent(
            token_ids=tokens,
            prompt_tokens=self.prompt_len,
            cached_tokens=self.cached_tokens or 0,
            num_generated=self.num_out,
            finished=final,
            finish_reason="length" if final else None,
            time=self._last_time,
        )
