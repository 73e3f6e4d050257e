"""What the driver records about each request, and the outcome classes.

One :class:`RequestRecord` per request sent. It is mutable while the request is in
flight (the streaming client fills it in) and is then only read. Times are seconds on
the run's clock (``loop.time()`` minus the run start), so the same record works in real
and virtual time.

Every request ends in exactly one outcome class (:data:`OUTCOMES`, documented in
``docs/concepts/reliability.md``):

======================  ==================================================================
``ok``                  a complete answer: the stream ended with ``[DONE]`` (or after a
                        ``finish_reason``), with every token asked for
``http_status``         the server answered with an error status (``status`` holds it)
``connect_error``       no connection (refused, reset, unreachable, DNS)
``timeout``             connect, first byte, between tokens or the whole request took
                        longer than its limit (``error`` says which)
``protocol_error``      the body was not a valid stream: bad JSON, no ``data:`` events, an
                        error event, or the stream ended before ``[DONE]`` and before a
                        ``finish_reason``
``incomplete``          fewer tokens than the request asked for with ``ignore_eos`` or
                        ``min_tokens``
``throttled``           HTTP 429 or 503 (after any ``Retry-After`` retries asked for)
``cancelled``           the run itself stopped while the request was in flight
======================  ==================================================================

All but ``ok`` and ``cancelled`` count as errors (``error_rate``); ``cancelled`` requests
count in neither the errors nor the denominator: they say nothing about the server.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

__all__ = ["ERROR_OUTCOMES", "OUTCOMES", "RequestRecord"]

OUTCOMES = ("ok", "http_status", "connect_error", "timeout", "protocol_error", "incomplete",
            "throttled", "cancelled")
ERROR_OUTCOMES = tuple(o for o in OUTCOMES if o not in ("ok", "cancelled"))


_gaps: Callable[[], array[float]] = partial(array, "d")  # type: ignore[assignment]


@dataclass(slots=True)
class RequestRecord:
    """Measurements of one request.

    ``designed_cached_tokens`` is what the workload plan says a perfect (infinite) cache
    would serve for this prompt, counted at the workload's block granularity in send order.
    ``cached_tokens`` is what the server reported in ``usage.prompt_tokens_details``;
    ``None`` when the server did not report it. ``min_tokens`` is how many output tokens
    the request demanded (``max_tokens`` with ``ignore_eos``, or ``min_tokens``): fewer
    is ``incomplete``. ``outcome`` is None while the request is in flight, then one of
    :data:`OUTCOMES`; ``error`` details any other outcome than ``ok``.

    ``scheduled_s`` is when the workload's plan wanted the request sent (closed loop:
    when the step's think time ended; open loop: the session's arrival; timed replay:
    the request's timestamp, or when the answer it waits for came); ``None`` where no
    plan says (the streams driver). Time between it and ``start_s`` is client-side
    queueing (token-budget waits, a concurrency limit): :attr:`effective_ttft_s` adds
    it to the server's TTFT.

    ``gap_s`` is the time between the end of the previous request of the same session
    and this one's send (tool latency or a human pause as the cache saw it); ``None``
    for a session's first request and where the driver does not know (timed replay).
    A subagent's requests carry ``parent_session_id`` (the session that spawned it) and
    ``spawned_s`` (when the spawn step started), so a fan-out's latency can be told.
    ``last_turn`` is True on the last request of a session that ran to its end (set once
    the session's plan is exhausted; a session cut short by the run's bound has none),
    False on its other requests and ``None`` where the driver does not know.

    ``model_ttft_s`` / ``model_e2e_s`` are the server's own account of the request in
    model time (what the simulator's model takes at speedup 1; ``usage``'s
    ``ctxplat_model_*_ms``), ``None`` where the server does not say;
    :attr:`ttft_skew_s` / :attr:`e2e_skew_s` are the client's figures minus them.
    """

    session_id: str
    user: int
    index: int
    prompt_tokens: int
    max_tokens: int
    designed_cached_tokens: int = 0
    min_tokens: int = 0
    start_s: float = 0.0
    scheduled_s: float | None = None
    ttft_s: float | None = None
    end_s: float | None = None
    output_tokens: int = 0
    cached_tokens: int | None = None
    usage_prompt_tokens: int | None = None
    chunk_gaps_s: array[float] = field(default_factory=_gaps)
    status: int | None = None
    finish_reason: str | None = None
    outcome: str | None = None
    error: str | None = None
    retries: int = 0
    retry_after_s: float | None = None
    gap_s: float | None = None
    parent_session_id: str | None = None
    spawned_s: float | None = None
    last_turn: bool | None = None
    model_ttft_s: float | None = None
    model_e2e_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def e2e_s(self) -> float | None:
        if self.end_s is None:
            return None
        return self.end_s - self.start_s

    @property
    def queue_s(self) -> float:
        """Client-side queueing before the request was sent (0 when unknown)."""
        if self.scheduled_s is None:
            return 0.0
        return max(0.0, self.start_s - self.scheduled_s)

    @property
    def effective_ttft_s(self) -> float | None:
        """Time to first token as the plan's user saw it: queueing plus server TTFT."""
        if self.ttft_s is None:
            return None
        return self.ttft_s + self.queue_s

    @property
    def decode_tps(self) -> float | None:
        """Output tokens per second of this request after its first token."""
        if self.ttft_s is None or self.end_s is None or self.output_tokens < 2:
            return None
        span = self.end_s - (self.start_s + self.ttft_s)
        if span <= 0:
            return None
        return (self.output_tokens - 1) / span

    def set_model_ms(self, ttft_ms: float | None, e2e_ms: float | None) -> None:
        """Record the server's model-time TTFT and end (milliseconds)."""
        self.model_ttft_s = None if ttft_ms is None else ttft_ms / 1000.0
        self.model_e2e_s = None if e2e_ms is None else e2e_ms / 1000.0

    @property
    def ttft_skew_s(self) -> float | None:
        """Client TTFT minus the server's model-time TTFT (None when either is unknown)."""
        if self.ttft_s is None or self.model_ttft_s is None:
            return None
        return self.ttft_s - self.model_ttft_s

    @property
    def e2e_skew_s(self) -> float | None:
        """Client end-to-end time minus the server's model-time one."""
        e2e = self.e2e_s
        if e2e is None or self.model_e2e_s is None:
            return None
        return e2e - self.model_e2e_s

    def fail(self, outcome: str, error: str, end_s: float) -> None:
        """End the request with ``outcome`` (not ``ok``), keeping what was measured."""
        self.outcome = outcome
        self.error = error
        if self.end_s is None:
            self.end_s = end_s

    def reset(self) -> None:
        """Forget an attempt's measurements (before a retry)."""
        self.ttft_s = self.end_s = self.cached_tokens = self.usage_prompt_tokens = None
        self.output_tokens = 0
        del self.chunk_gaps_s[:]
        self.status = self.finish_reason = self.outcome = self.error = None
        self.retry_after_s = None
        self.model_ttft_s = self.model_e2e_s = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "user": self.user,
            "index": self.index,
            "prompt_tokens": self.prompt_tokens,
            "max_tokens": self.max_tokens,
            "min_tokens": self.min_tokens,
            "designed_cached_tokens": self.designed_cached_tokens,
            "scheduled_s": self.scheduled_s,
            "start_s": self.start_s,
            "ttft_s": self.ttft_s,
            "end_s": self.end_s,
            "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens,
            "usage_prompt_tokens": self.usage_prompt_tokens,
            "status": self.status,
            "finish_reason": self.finish_reason,
            "outcome": self.outcome,
            "error": self.error,
            "retries": self.retries,
            "gap_s": self.gap_s,
            "parent_session_id": self.parent_session_id,
            "spawned_s": self.spawned_s,
            "last_turn": self.last_turn,
            "model_ttft_s": self.model_ttft_s,
            "model_e2e_s": self.model_e2e_s,
        }
