"""``python -m pytest_ctxplat.servers.watchdog PARENT_PID [OPTIONS] -- COMMAND...``

OPTIONS: ``--watch PID`` and ``--cleanup-dir DIR``, each as often as needed.

Runs COMMAND (a server) in the watchdog's own process group and ties its life to
PARENT_PID (and to every ``--watch`` PID): when one of them goes away (even by SIGKILL,
where no ``atexit`` runs), the whole group is terminated and then every ``--cleanup-dir``
is removed, so a heavy server such as vLLM never outlives the test run nor leaves its
temporary folder behind. When COMMAND exits by itself (a restart, a crash), whatever it
started (engine workers) is terminated too, and the folders are kept for its owner. The
exit status is COMMAND's (128 + signal number when it was killed by a signal).
"""

from __future__ import annotations

import os
import shutil
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


USAGE = ("usage: python -m pytest_ctxplat.servers.watchdog PARENT_PID [--watch PID]... "
         "[--cleanup-dir DIR]... -- COMMAND...")


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is dead for our purpose)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _parse(args: list[str]) -> tuple[int, list[int], list[str], list[str]] | None:
    """PARENT_PID, the --watch pids, the --cleanup-dir folders and COMMAND; None when
    ``args`` do not follow the usage."""
    if "--" not in args:
        return None
    cut = args.index("--")
    head, command = args[:cut], args[cut + 1:]
    if not head or not head[0].isdigit() or not command or len(head) % 2 == 0:
        return None
    watched: list[int] = []
    cleanup: list[str] = []
    for opt, value in zip(head[1::2], head[2::2], strict=True):
        if opt == "--watch" and value.isdigit():
            watched.append(int(value))
        elif opt == "--cleanup-dir" and value:
            cleanup.append(value)
        else:
            return None
    return int(head[0]), watched, cleanup, command


def main(argv: Sequence[str] | None = None) -> int:
    parsed = _parse(list(sys.argv[1:] if argv is None else argv))
    if parsed is None:
        print(USAGE, file=sys.stderr)
        return 2
    parent, watched, cleanup, command = parsed
    child = subprocess.Popen(command)

    def forward(signum: int, _frame: object) -> None:
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    orphaned = False
    while True:
        try:
            rc = child.wait(0.5)
            break
        except subprocess.TimeoutExpired:
            pass
        gone = [pid for pid in watched if not _pid_alive(pid)]
        if os.getppid() != parent or gone:
            who = f"parent {parent}" if os.getppid() != parent else f"process {gone[0]}"
            print(f"ctxplat watchdog: {who} is gone; stopping the server",
                  file=sys.stderr, flush=True)
            orphaned = True
            _terminate_group()
            rc = child.wait()
            break
    code = rc if rc >= 0 else 128 - rc
    print(f"ctxplat watchdog: server exited with code {rc}", file=sys.stderr, flush=True)
    _terminate_group(grace_s=3.0)
    if orphaned:
        for path in cleanup:
            shutil.rmtree(path, ignore_errors=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
