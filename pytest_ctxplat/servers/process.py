"""Child processes for servers: own process group, log file, readiness, clean kill.

A launched server runs in a new session (its own process group), so teardown can
signal the whole group: the server and anything it started. Every live process is
also tracked in :data:`LIVE`, and an ``atexit`` hook kills what is left and removes the
temporary folders made with :func:`make_temp_dir`, so servers never outlive the Python
process that started them. Where that process is SIGKILLed (no ``atexit`` runs), the
server side takes over: the simulator and the watchdog under vLLM watch
:func:`owner_pids` and, once one is gone, stop and remove their temporary folder.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import httpx

from ..errors import ServerStartError

__all__ = ["LIVE", "ManagedProcess", "kill_all", "make_temp_dir", "owner_pids",
           "remove_temp_dir"]

LIVE: set[ManagedProcess] = set()
_TEMP_DIRS: dict[Path, int] = {}  # folder -> pid of the process that made it
_WATCHDOG_PREFIX = "ctxplat watchdog:"  # the lines servers/watchdog.py writes into the log


def owner_pids() -> list[int]:
    """The processes whose end must end a server started here: this process and, in a
    pytest-xdist worker, the controller that started it (when the controller is killed,
    its workers notice only seconds later, and they may be killed without a chance to
    clean up)."""
    pids = [os.getpid()]
    if os.environ.get("PYTEST_XDIST_WORKER"):
        parent = os.getppid()
        if parent > 1:
            pids.append(parent)
    return pids


def make_temp_dir(prefix: str) -> Path:
    """A new temporary folder (in ``$TMPDIR``), removed by :func:`remove_temp_dir` or at
    interpreter exit, whichever comes first."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _TEMP_DIRS[path] = os.getpid()
    return path


def remove_temp_dir(path: Path) -> None:
    """Remove a folder made by :func:`make_temp_dir` (idempotent)."""
    _TEMP_DIRS.pop(path, None)
    shutil.rmtree(path, ignore_errors=True)


class ManagedProcess:
    """A server process with its log file."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._owner = os.getpid()  # a forked child must not stop what it inherited
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115  (closed in stop())
        full_env = dict(os.environ)
        full_env.update(env or {})
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            self._log.close()
            raise ServerStartError(f"cannot start {self.argv[0]}: {exc}") from exc
        LIVE.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the leader still runs. It is not reaped here: until :meth:`stop` has
        signalled its group, its pid (the group's id) stays reserved, so a late signal
        can never reach an unrelated group that was given a reused pid."""
        if self.proc.returncode is not None:
            return False
        try:
            state = os.waitid(os.P_PID, self.proc.pid,
                              os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped by someone else
            return self.proc.poll() is None
        return state is None

    def _wait_exit(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the leader to exit, without reaping it."""
        end = time.monotonic() + timeout_s
        delay = 0.005
        while self.alive():
            if time.monotonic() >= end:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return True

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server's log, with the watchdog's own lines
        (how the server exited, and why it was stopped) moved to the end: a dying
        server's children often print long tracebacks after its exit, and the exit is
        what a report that shows only the last few lines must keep."""
        try:
            data = self.log_path.read_bytes()[-64_000:]
        except OSError:
            return ""
        text = data.decode("utf-8", "replace").splitlines()
        own = [line for line in text if line.startswith(_WATCHDOG_PREFIX)][-3:]
        rest = [line for line in text if not line.startswith(_WATCHDOG_PREFIX)]
        return "\n".join([*rest[-max(lines - len(own), 0):], *own][-lines:])

    def wait_ready(
        self,
        url_fn: Callable[[], str | None],
        *,
        deadline_s: float,
        probe: str = "/health",
    ) -> str:
        """Poll ``probe`` until it answers 200; raise ServerStartError with the log tail if
        the process exits or ``deadline_s`` passes. ``url_fn`` returns the base URL once
        known (None while the port is not yet published)."""
        end = time.monotonic() + deadline_s
        delay = 0.05
        last = "no answer yet"
        with httpx.Client(timeout=2.0) as client:
            while True:
                if not self.alive():
                    self.stop()  # whatever it started goes with it
                    raise ServerStartError(
                        f"server exited with code {self.proc.returncode} before it was ready "
                        f"({' '.join(self.argv[:4])} ...); log tail ({self.log_path}):\n"
                        f"{self.log_tail()}"
                    )
                url = url_fn()
                if url is None:  # a cheap check: keep it frequent
                    delay = 0.02
                else:
                    try:
                        resp = client.get(url + probe)
                        if resp.status_code == 200:
                            return url
                        last = f"HTTP {resp.status_code}"
                    except httpx.HTTPError as exc:
                        last = type(exc).__name__
                    delay = min(max(delay, 0.05) * 1.5, 0.5)
                if time.monotonic() > end:
                    self.stop()
                    raise ServerStartError(
                        f"server not ready after {deadline_s:.0f} s (last probe: {last}); "
                        f"log tail ({self.log_path}):\n{self.log_tail()}"
                    )
                time.sleep(delay)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM the process group, SIGKILL what is left of it after ``timeout_s``,
        then reap the leader (idempotent: a stopped process is not signalled again)."""
        try:
            if self.proc.returncode is None and os.getpid() == self._owner:
                if self.alive():
                    _signal_group(self.proc.pid, signal.SIGTERM)
                    self._wait_exit(timeout_s)
                # The leader may be gone while children it started remain in the group;
                # it is not reaped yet, so the group id is still this group's.
                _signal_group(self.proc.pid, signal.SIGKILL)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            return self.proc.returncode
        finally:
            LIVE.discard(self)
            if not self._log.closed:
                self._log.close()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_all(keep: Collection[object] = ()) -> None:
    """Stop every server still tracked (atexit, session end, Ctrl-C), except those in
    ``keep``."""
    for proc in list(LIVE):
        if proc not in keep:
            proc.stop(timeout_s=3.0)


def _at_exit() -> None:
    kill_all()
    me = os.getpid()
    for path, owner in list(_TEMP_DIRS.items()):
        if owner == me:  # not in a forked child: the folder is its parent's
            remove_temp_dir(path)


atexit.register(_at_exit)
