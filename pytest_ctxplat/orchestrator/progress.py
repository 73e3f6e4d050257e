"""Live figures of a run in progress, for a progress display.

:func:`~pytest_ctxplat.orchestrator.core.play` calls ``PlayOptions.on_progress`` with a
:class:`Progress` now and then (at most every ``progress_every_s`` wall seconds, so a
run in virtual time is not slowed down). :class:`ProgressTracker` computes it from the
runner's records incrementally: each record is looked at a bounded number of times.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from ..report.records import ERROR_OUTCOMES, RequestRecord

__all__ = ["Progress", "ProgressTracker"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Progress:
    """A run's figures so far. Times are model seconds since the run started.

    ``duration_s`` / ``max_requests`` bound the run (None: not bounded that way).
    ``users``: users with a request in flight or sent within the recent window.
    ``requests_per_s`` and ``ttft_p95_ms`` cover requests that ended within the recent
    window (``window_s``); ``hit_rate`` is request-side cached tokens over prompt tokens
    of every request that reported them so far (None: none did yet).
    """

    elapsed_s: float
    duration_s: float | None
    max_requests: int | None
    users: int
    in_flight: int
    completed: int
    errors: int
    requests_per_s: float
    ttft_p95_ms: float | None
    hit_rate: float | None
    window_s: float

    @property
    def fraction(self) -> float | None:
        """How much of the run's bound is done (0..1; None: the run has no bound)."""
        parts = []
        if self.duration_s:
            parts.append(self.elapsed_s / self.duration_s)
        if self.max_requests:
            parts.append(self.completed / self.max_requests)
        return min(1.0, max(parts)) if parts else None

    @property
    def time_left_s(self) -> float | None:
        """Model seconds until the bound, estimated from the pace so far for
        ``max_requests`` (None: unknown)."""
        left = []
        if self.duration_s:
            left.append(max(0.0, self.duration_s - self.elapsed_s))
        if self.max_requests and self.completed and self.elapsed_s > 0:
            rate = self.completed / self.elapsed_s
            left.append(max(0, self.max_requests - self.completed) / rate)
        return min(left) if left else None


class ProgressTracker:
    """Turns the runner's growing ``records`` into :class:`Progress` snapshots.

    Call :meth:`snapshot` with the records list (appended to in send order; a record's
    ``outcome`` is set when it ends). Ended records are counted once; only records in
    flight and those that ended within ``window_s`` are kept.
    """

    def __init__(self, *, duration_s: float | None, max_requests: int | None,
                 window_s: float = 10.0) -> None:
        self.duration_s = duration_s
        self.max_requests = max_requests
        self.window_s = window_s
        self._seen = 0
        self._open: list[RequestRecord] = []
        self._recent: list[tuple[float, float | None, int]] = []  # (end_s, ttft_s, user)
        self._completed = 0
        self._errors = 0
        self._prompt = 0
        self._cached = 0

    def snapshot(self, records: Sequence[RequestRecord], now_s: float) -> Progress:
        """The figures at model time ``now_s``."""
        self._open.extend(records[self._seen:])
        self._seen = len(records)
        still_open = []
        for r in self._open:
            if r.outcome is None:
                still_open.append(r)
            else:
                self._ended(r, now_s)
        self._open = still_open
        cutoff = now_s - self.window_s
        recent = self._recent = [x for x in self._recent if x[0] >= cutoff]
        span = min(self.window_s, now_s) if now_s > 0 else 0.0
        ttfts = [t for _, t, _ in recent if t is not None]
        users = {u for _, _, u in recent} | {r.user for r in still_open}
        return Progress(
            elapsed_s=now_s, duration_s=self.duration_s, max_requests=self.max_requests,
            users=len(users), in_flight=len(still_open), completed=self._completed,
            errors=self._errors,
            requests_per_s=len(recent) / span if span > 0 else 0.0,
            ttft_p95_ms=float(np.percentile(ttfts, 95)) * 1000.0 if ttfts else None,
            hit_rate=self._cached / self._prompt if self._prompt else None,
            window_s=self.window_s)

    def _ended(self, r: RequestRecord, now_s: float) -> None:
        self._completed += 1
        if r.outcome in ERROR_OUTCOMES:
            self._errors += 1
        if r.ok and r.cached_tokens is not None:
            self._prompt += r.usage_prompt_tokens or r.prompt_tokens
            self._cached += r.cached_tokens
        end = r.end_s if r.end_s is not None else now_s
        if end >= now_s - self.window_s and not math.isnan(end):
            self._recent.append((end, r.ttft_s if r.ok else None, r.user))
