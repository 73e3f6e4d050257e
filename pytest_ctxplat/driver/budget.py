"""One request budget shared by the worker processes of a split run on one machine.

A run bounded by ``max_requests`` and split across ``workers=N`` processes draws its
requests from one pool instead of N fixed shares, so the workers end together: a worker
that gets more of the CPU (or a faster connection) plays more of the run, and no worker
plays the end of the run alone at a fraction of the load, which fixed shares do when one
worker finishes first (on a 2-core machine, two workers with fixed shares of 20,000
requests spent the last fifth of the run at half the request rate).

A worker draws in chunks that shrink as the pool empties (guided self-scheduling: a
draw takes ``left / (4 * parts)`` requests, at least one), so draws are rare (one lock
round trip each, tens per run) and at the end no worker holds more than a few requests
that another could have sent. Requests a worker drew and did not send (its users ran
out of sessions) go back to the pool when its run ends.

Shards on different hosts cannot share memory: they keep fixed shares
(:func:`~pytest_ctxplat.orchestrator.parts.part_spec`).
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

from ..errors import ConfigError

__all__ = ["RequestBudget"]

CHUNK_DIVISOR = 4  # a draw takes left / (CHUNK_DIVISOR * parts) requests, at least one


class RequestBudget:
    """``total`` requests shared by ``parts`` processes (pass it to them when they are
    started: it lives in shared memory, created in ``context``, by default ``spawn``)."""

    def __init__(self, total: int, parts: int, *, context: Any = None) -> None:
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise ConfigError(f"request budget: expected an integer >= 0, got {total!r}")
        if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
            raise ConfigError(f"request budget: parts must be an integer >= 1, got {parts!r}")
        ctx = context if context is not None else mp.get_context("spawn")
        self.total = total
        self.parts = parts
        self._left = ctx.Value("q", total)  # a shared int64 with its own lock

    @property
    def left(self) -> int:
        """Requests no process has drawn yet."""
        return int(self._left.value)

    def draw(self) -> int:
        """Take the next chunk of requests for this process (0: the pool is empty)."""
        with self._left.get_lock():
            left = int(self._left.value)
            n = min(left, max(1, left // (CHUNK_DIVISOR * self.parts)))
            self._left.value = left - n
        return n

    def give_back(self, n: int) -> None:
        """Return ``n`` drawn requests that this process will not send."""
        if n > 0:
            with self._left.get_lock():
                self._left.value += n

    def __repr__(self) -> str:
        return f"RequestBudget(total={self.total}, parts={self.parts}, left={self.left})"
