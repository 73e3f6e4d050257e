"""Child processes for servers: own process group, log file, readiness, clean kill.

A launched server runs in a new session (its own process group), so teardown can
signal the whole group: the server and anything it started. Every live process is
also tracked in :data:`LIVE`, and an ``atexit`` hook kills what is left, so servers
never outlive the Python process that started them (the simulator additionally
watches its parent pid).
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

from ..errors import ServerStartError

__all__ = ["LIVE", "ManagedProcess", "kill_all"]

LIVE: set[ManagedProcess] = set()


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
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115  (closed in stop())
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
        LIVE.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            data = self.log_path.read_bytes()[-64_000:]
        except OSError:
            return ""
        text = data.decode("utf-8", "replace").splitlines()
        return "\n".join(text[-lines:])

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
                    raise ServerStartError(
                        f"server exited with code {self.proc.returncode} before it was ready "
                        f"({' '.join(self.argv[:4])} ...); log tail ({self.log_path}):\n"
                        f"{self.log_tail()}"
                    )
                url = url_fn()
                if url is not None:
                    try:
                        resp = client.get(url + probe)
                        if resp.status_code == 200:
                            return url
                        last = f"HTTP {resp.status_code}"
                    except httpx.HTTPError as exc:
                        last = type(exc).__name__
                if time.monotonic() > end:
                    self.stop()
                    raise ServerStartError(
                        f"server not ready after {deadline_s:.0f} s (last probe: {last}); "
                        f"log tail ({self.log_path}):\n{self.log_tail()}"
                    )
                time.sleep(delay)
                delay = min(delay * 1.5, 0.5)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM the process group, then SIGKILL it after ``timeout_s``."""
        try:
            if self.alive():
                _signal_group(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    pass
            # The leader may be gone while children it started remain in the group.
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


def kill_all() -> None:
    """Stop every server still tracked (atexit, session end, Ctrl-C)."""
    for proc in list(LIVE):
        proc.stop(timeout_s=3.0)


atexit.register(kill_all)
