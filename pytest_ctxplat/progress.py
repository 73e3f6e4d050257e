"""A live progress display of a run on a terminal (``rich``), for the pytest plugin and
the ``ctxplat run`` / ``ctxplat simulate`` commands.

:func:`progress_wanted` decides whether to show it (an explicit choice, else only on a
terminal and never under CI); :class:`LiveProgress` is the ``on_progress`` callback of a
run (:class:`~pytest_ctxplat.orchestrator.progress.Progress`): it stays silent until the
run has lasted ``delay_s`` wall seconds, redraws at most every ``min_interval_s``, and
erases itself when closed, so the output around it is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # (this module is imported while pytest starts: nothing heavy)
    from .orchestrator.progress import Progress

__all__ = ["CI_VARIABLES", "LiveProgress", "describe", "progress_wanted"]

# Set by CI services (CI) or by this project's own CI (CTXPLAT_CI): no live display.
CI_VARIABLES = ("CI", "CTXPLAT_CI")


def progress_wanted(choice: bool | None, stream: IO[Any] | None, *, quiet: bool = False,
                    env: Mapping[str, str] | None = None) -> bool:
    """Whether to show live progress: ``choice`` when given (an option such as
    ``--progress`` / ``--no-progress``); else only when ``stream`` is a terminal, output
    is not ``quiet`` and no CI variable (:data:`CI_VARIABLES`) is set."""
    if choice is not None:
        return choice
    env = os.environ if env is None else env
    if quiet or any(env.get(v) for v in CI_VARIABLES):
        return False
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError, OSError):  # a closed or odd stream
        return False


def describe(p: Progress) -> str:
    """One line of figures: users, in flight, requests/s, TTFT p95, hit rate, errors,
    time left (model time)."""
    parts = [f"users {p.users}", f"in flight {p.in_flight}", f"done {p.completed}",
             f"{p.requests_per_s:.1f} req/s",
             "TTFT p95 " + ("-" if p.ttft_p95_ms is None else f"{p.ttft_p95_ms:.0f} ms"),
             "hit " + ("-" if p.hit_rate is None else f"{p.hit_rate:.1%}")]
    if p.errors:
        parts.append(f"{p.errors} errors")
    left = p.time_left_s
    parts.append(f"{_duration(p.elapsed_s)} elapsed" if left is None
                 else f"{_duration(left)} left")
    return " | ".join(parts)


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class LiveProgress:
    """The ``on_progress`` callback that draws a ``rich`` progress bar.

    ``stderr``: draw on standard error (else standard output, looked up at each redraw).
    ``guard``: a context manager entered around every write (pytest: output capture
    suspended). ``column``: the cursor's column before the display started (pytest: the
    terminal writer's current line width); the display then starts on a new line and
    puts the cursor back there when it closes. ``force_terminal``: draw even when the
    stream is not a terminal (an explicit ``--progress``). ``clock``: wall seconds.
    """

    def __init__(self, title: str, *, stderr: bool = False, force_terminal: bool = False,
                 guard: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
                 column: Callable[[], int] | None = None, delay_s: float = 2.0,
                 min_interval_s: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.title = title
        self.stderr = stderr
        self.force_terminal = force_terminal
        self.guard = guard or contextlib.nullcontext
        self.column = column
        self.delay_s = delay_s
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.started = clock()
        self.next_draw = self.started + delay_s
        self.last: Progress | None = None
        self._bar: Any = None  # rich.progress.Progress once shown
        self._task: Any = None
        self._column = 0

    @property
    def shown(self) -> bool:
        """Whether the display is on the terminal now."""
        return self._bar is not None

    def __call__(self, progress: Progress) -> None:
        self.last = progress
        now = self.clock()
        if now < self.next_draw:
            return
        self.next_draw = now + self.min_interval_s
        with self.guard():
            if self._bar is None:
                self._start()
            self._bar.update(self._task, completed=_percent(progress),
                             total=None if progress.fraction is None else 100.0,
                             figures=describe(progress))
            self._bar.refresh()

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, TextColumn
        from rich.progress import Progress as Bar
        from rich.table import Column

        console = Console(stderr=self.stderr, force_terminal=self.force_terminal or None,
                          highlight=False)
        if self.column is not None:
            self._column = self.column()
            console.file.write("\n")
        self._bar = Bar(TextColumn("[bold]{task.description}", table_column=Column(
                            max_width=32, no_wrap=True, overflow="ellipsis")),
                        BarColumn(bar_width=20),
                        TextColumn("{task.fields[figures]}", table_column=Column(
                            ratio=1, overflow="fold")), console=console,
                        transient=True, auto_refresh=False, redirect_stdout=False,
                        redirect_stderr=False)
        self._task = self._bar.add_task(self.title, total=None, figures="")
        self._bar.start()

    def close(self) -> None:
        """Erase the display (when shown) and put the cursor back."""
        if self._bar is None:
            return
        bar, self._bar = self._bar, None
        with self.guard():
            bar.stop()
            if self.column is not None:
                file = bar.console.file
                file.write(f"\x1b[1A\x1b[{self._column + 1}G")
                file.flush()

    @contextlib.contextmanager
    def running(self) -> Iterator[LiveProgress]:
        """``with display.running(): ...``: closed however the block ends."""
        try:
            yield self
        finally:
            self.close()


def _percent(p: Progress) -> float:
    fraction = p.fraction
    return 0.0 if fraction is None else 100.0 * fraction
