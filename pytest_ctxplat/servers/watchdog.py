"""``python -m pytest_ctxplat.servers.watchdog PARENT_PID -- COMMAND...``

Runs COMMAND (a server) in the watchdog's own process group and ties its life to
PARENT_PID: when the parent goes away (even by SIGKILL, where no ``atexit`` runs), the
whole group is terminated, so a heavy server such as vLLM never outlives the test run.
When COMMAND exits by itself, whatever it started (engine workers) is terminated too.
The exit status is COMMAND's (128 + signal number when it was killed by a signal).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]


def _group_members(pgid: int) -> list[int]:
    me = os.getpid()
    found: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(stat[2]) == pgid and stat[0] != b"Z":
            found.append(int(entry))
    return found


def _terminate_group(grace_s: float = 5.0) -> None:
    """SIGTERM every other member of this process group, SIGKILL what is left."""
    pgid = os.getpgid(0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    members = _group_members(pgid)
    for pid in members:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.monotonic() + grace_s
    while members and time.monotonic() < end:
        time.sleep(0.1)
        members = _group_members(pgid)
    for pid in members:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[1] != "--" or not args[0].isdigit():
        print("usage: python -m pytest_ctxplat.servers.watchdog PARENT_PID -- COMMAND...",
              file=sys.stderr)
        return 2
    parent = int(args[0])
    child = subprocess.Popen(args[2:])

    def forward(signum: int, _frame: object) -> None:
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        try:
            rc = child.wait(0.5)
            break
        except subprocess.TimeoutExpired:
            pass
        if os.getppid() != parent:
            print(f"ctxplat watchdog: parent {parent} is gone; stopping the server",
                  file=sys.stderr, flush=True)
            _terminate_group()
            rc = child.wait()
            break
    code = rc if rc >= 0 else 128 - rc
    print(f"ctxplat watchdog: server exited with code {rc}", file=sys.stderr, flush=True)
    _terminate_group(grace_s=3.0)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
