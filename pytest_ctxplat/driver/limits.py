"""Limits of the streaming client (pool size, timeouts, throttling retries), the watch
that enforces the timeouts, and the reading of error answers.

Timeouts (defaults bound a silent server; see ``docs/concepts/reliability.md``):

* ``connect_timeout_s``: to open a TCP connection (then: ``timeout``, "connect");
* ``first_byte_timeout_s``: from sending the request to its first token chunk;
* ``token_timeout_s``: the longest silence after the first token chunk;
* ``request_timeout_s``: the whole request (None: no limit).

The first-byte, token and request limits are enforced by one :class:`DeadlineWatch` per
client, a task that looks at every request in flight a few times a second: the hot path
only stores the time of its last received buffer.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..config import FieldError, Validated, setting

__all__ = ["DEFAULT_LIMITS", "THROTTLE_STATUSES", "ClientLimits", "DeadlineWatch", "Flight",
           "retry_after_s", "swallow_own_cancel"]

THROTTLE_STATUSES = (429, 503)


@dataclass(frozen=True, kw_only=True)
class ClientLimits(Validated):
    """Connection pool size, timeouts and throttling retries of a ``StreamClient``.

    ``max_connections``: most open connections (0: no limit). With ``retry_throttled``
    a request answered 429 or 503 is sent again after its ``Retry-After`` (or an
    exponential backoff from 1 s), waiting at most ``retry_wait_max_s`` each time, up to
    ``retry_limit`` times; off by default, so a gate measures what the server does.
    ``max_connect_failures`` is the run's circuit breaker.
    """

    max_connections: int = setting(0, ge=0, doc="most open connections (0: no limit)")
    connect_timeout_s: float = setting(10.0, gt=0, doc="to open a connection")
    first_byte_timeout_s: float = setting(45.0, gt=0, doc="send to the first token chunk")
    token_timeout_s: float = setting(30.0, gt=0, doc="longest silence between tokens")
    request_timeout_s: float | None = setting(None, gt=0, doc="the whole request")
    retry_throttled: bool = setting(False, doc="retry 429/503 after Retry-After")
    retry_limit: int = setting(3, ge=0, doc="most retries of one request")
    retry_wait_max_s: float = setting(30.0, gt=0, doc="longest wait before a retry")
    max_connect_failures: int = setting(10, ge=0, doc="stop the run after this many "
                                        "connection failures in a row (0: never)")

    def validate(self) -> None:
        for name in ("connect_timeout_s", "first_byte_timeout_s", "token_timeout_s",
                     "request_timeout_s", "retry_wait_max_s"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise FieldError(name, f"must be finite, got {value!r}")

    @property
    def watch_period_s(self) -> float:
        """How often the deadline watch looks (a twentieth of the tightest limit)."""
        tightest = min(self.first_byte_timeout_s, self.token_timeout_s,
                       self.request_timeout_s or math.inf)
        return min(0.5, max(0.02, tightest / 20))


DEFAULT_LIMITS = ClientLimits()


class Flight:
    """One request in flight, as the deadline watch sees it. ``last`` is the loop time
    of its last received buffer (None before the first token chunk)."""

    __slots__ = ("expired", "last", "start", "task")

    def __init__(self, task: asyncio.Task[object] | None, start: float) -> None:
        self.task = task
        self.start = start
        self.last: float | None = None
        self.expired: str | None = None


class DeadlineWatch:
    """Cancels requests past their first-byte, token or request deadline (with
    ``flight.expired`` saying which), so the client records them as timeouts."""

    def __init__(self, limits: ClientLimits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self.clock = clock
        self.flights: set[Flight] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _verdict(self, f: Flight, now: float) -> str | None:
        lim = self.limits
        if f.last is None:
            if now - f.start > lim.first_byte_timeout_s:
                return f"no first token within first_byte_timeout_s={lim.first_byte_timeout_s:g}"
        elif now - f.last > lim.token_timeout_s:
            return f"no data for token_timeout_s={lim.token_timeout_s:g} between tokens"
        if lim.request_timeout_s is not None and now - f.start > lim.request_timeout_s:
            return f"request took longer than request_timeout_s={lim.request_timeout_s:g}"
        return None

    async def _run(self) -> None:
        period = self.limits.watch_period_s
        while True:
            await asyncio.sleep(period)
            now = self.clock()
            for f in list(self.flights):
                if f.expired is None and f.task is not None:
                    why = self._verdict(f, now)
                    if why is not None:
                        f.expired = why
                        f.task.cancel()


def swallow_own_cancel(flight: Flight) -> bool:
    """After a CancelledError: True when it came from the deadline watch alone (then
    the cancellation is taken back and the request ends as a timeout)."""
    if flight.expired is None:
        return False
    task = flight.task
    if task is not None and sys.version_info >= (3, 11):
        if task.cancelling() > 1:
            return False  # the run was cancelled too: let that through
        task.uncancel()
    return True


def retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: a number of seconds or an HTTP
    date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
