"""A virtual-time asyncio event loop: time jumps to the next timer, nothing really sleeps.

:class:`VirtualEventLoop` is a selector event loop whose ``time()`` is a counter and whose
selector, asked to wait ``timeout`` seconds, adds ``timeout`` to that counter and returns
at once. Callbacks, tasks, ``asyncio.sleep``, ``wait_for`` and timeouts all work; an hour
of model time passes as fast as the code between timers runs. There is no real I/O: a
coroutine that waits for a socket, a thread or a subprocess would wait forever, so the
loop raises :class:`VirtualTimeDeadlock` when nothing is scheduled and nothing is ready.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

from pytest_ctxplat.errors import VirtualTimeDeadlock

__all__ = ["VirtualClock", "VirtualEventLoop", "VirtualTimeDeadlock", "run_virtual"]

T = TypeVar("T")


class _VirtualSelector(selectors.SelectSelector):
    def __init__(self, loop: VirtualEventLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise VirtualTimeDeadlock(
                "virtual time: every task is waiting and no timer is pending")
        if timeout > 0:
            self._loop._advance(timeout)
        return []


class VirtualEventLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock starting at ``start`` seconds."""

    def __init__(self, start: float = 0.0) -> None:
        self._virtual_now = float(start)
        self._quiet: set[int] = set()  # ids of quiet timer handles
        super().__init__(_VirtualSelector(self))

    def time(self) -> float:
        return self._virtual_now

    def _advance(self, dt: float) -> None:
        self._virtual_now += dt

    def horizon(self) -> float:
        """Until when nothing but the running callback can happen: now if other
        callbacks are ready, else the next timer that is not *quiet* (infinity without
        one). Quiet timers (:meth:`VirtualClock.sleep_quiet`) are engine steps whose end
        nobody outside the engine sees."""
        if self._ready:  # type: ignore[attr-defined]
            return self._virtual_now
        scheduled = self._scheduled  # type: ignore[attr-defined]
        if not scheduled:
            return float("inf")
        quiet = self._quiet
        top = scheduled[0]
        if id(top) not in quiet and not top._cancelled:
            return float(top._when)
        # the heap's first loud timer: walk down from the root through quiet (or
        # cancelled) nodes only; a loud node's subtree cannot hold anything earlier
        best = float("inf")
        stack = [0]
        n = len(scheduled)
        while stack:
            i = stack.pop()
            h = scheduled[i]
            if id(h) in quiet or h._cancelled:
                stack.extend(j for j in (2 * i + 1, 2 * i + 2) if j < n)
            elif h._when < best:
                best = h._when
        return float(best)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class VirtualClock:
    """The engine clock for a :class:`VirtualEventLoop`: model time is loop time, and
    :meth:`horizon` lets an engine run decode steps without the loop until the next
    timer (see :mod:`pytest_ctxplat.sim.burst`). On another loop, no bursts."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, dt: float) -> None:
        await asyncio.sleep(max(0.0, dt))

    async def sleep_quiet(self, dt: float) -> None:
        """Sleep on a timer that :meth:`VirtualEventLoop.horizon` ignores."""
        loop = asyncio.get_running_loop()
        if not isinstance(loop, VirtualEventLoop):
            await asyncio.sleep(max(0.0, dt))
            return
        fut: asyncio.Future[None] = loop.create_future()
        handle = loop.call_later(max(0.0, dt), _wake, fut)
        key = id(handle)
        loop._quiet.add(key)
        try:
            await fut
        finally:
            handle.cancel()
            loop._quiet.discard(key)

    def horizon(self) -> float:
        loop = asyncio.get_running_loop()
        return loop.horizon() if isinstance(loop, VirtualEventLoop) else loop.time()


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh :class:`VirtualEventLoop` and close it."""
    loop = VirtualEventLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
