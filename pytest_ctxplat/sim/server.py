"""Run the simulator as an HTTP server: a command line (``python -m pytest_ctxplat.sim``,
``ctxplat serve-sim``) and an in-process server thread for tests.

``--parent-pid PID`` (may be repeated) makes the server exit when any of those processes
is gone: checked every 0.5 s, and at once on Linux when one of them is the real parent
(``PR_SET_PDEATHSIG``; the kernel also sends it when the parent *thread* that spawned us
exits, so the signal only triggers a check). ``--cleanup-dir DIR`` is removed when the
server exits because a watched process is gone (its owner cannot remove it then).
``--ready-file PATH`` receives the bound port, written atomically once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType

import uvicorn

from pytest_ctxplat.errors import ConfigError, SimulatorError
from pytest_ctxplat.sim.app import create_app
from pytest_ctxplat.sim.cluster import Cluster, Router
from pytest_ctxplat.sim.config import SimConfig
from pytest_ctxplat.sim.engine import Engine

__all__ = ["ParentWatch", "SimServerHandle", "add_arguments", "build_parser", "main", "serve",
           "serve_in_thread"]

_PR_SET_PDEATHSIG = 1
# the parent-death signal: only a prompt to check (absent on Windows: the poll remains)
_PARENT_DEATH_SIGNAL: signal.Signals | None = getattr(signal, "SIGUSR1", None)
PARENT_CHECK_S = 0.5


DESCRIPTION = "Simulated vLLM (OpenAI-compatible) server."


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctxplat-sim", description=DESCRIPTION)
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The server's options (``python -m pytest_ctxplat.sim`` and ``ctxplat serve-sim``)."""
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--config", metavar="YAML", help="SimConfig settings as a YAML mapping")
    p.add_argument("--model", help="served model name")
    p.add_argument("--speedup", type=float)
    p.add_argument("--block-size", type=int)
    p.add_argument("--kv-capacity-tokens", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--profile", help="simulator profile: a built-in name (e.g. "
                   "h100-llama8b-dram) or a profile YAML file")
    p.add_argument("--parent-pid", type=int, metavar="PID", action="append",
                   help="exit when PID is gone (repeat it to watch several processes)")
    p.add_argument("--cleanup-dir", metavar="DIR",
                   help="remove DIR when exiting because a --parent-pid is gone")
    p.add_argument("--ready-file", metavar="PATH", help="write the bound port here")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The config file (if any) with command-line overrides applied."""
    config = SimConfig.from_yaml(args.config) if args.config else SimConfig()
    overrides = {
        name: getattr(args, name)
        for name in ("model", "speedup", "block_size", "kv_capacity_tokens", "seed", "profile")
        if getattr(args, name) is not None
    }
    if overrides:
        config = SimConfig.from_mapping({**_as_dict(config), **overrides}, "command line")
    return config


def _as_dict(config: SimConfig) -> dict[str, object]:
    return {name: getattr(config, name) for name in SimConfig.field_names()}


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket. Its protocol is IPPROTO_TCP (not 0) and it has TCP_NODELAY,
    so every accepted connection sends each SSE event at once: asyncio disables Nagle's
    algorithm only on sockets whose ``proto`` says TCP, and with it on, the events after
    the headers waited for the client's delayed ACK (about 40 ms on Linux): a whole
    short answer arrived in one piece, tens of model milliseconds late at a speed-up."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def build_engines(config: SimConfig) -> tuple[Engine, Router | None]:
    """The engine to serve, plus a router when the profile has several replicas."""
    engine = Engine(config)
    profile = engine.profile
    if profile is None or (profile.replicas == 1 and profile.disaggregation is None):
        return engine, None
    if profile.disaggregation is not None:
        raise ConfigError("disaggregated prefill/decode is simulated in process only "
                          "(ctxplat simulate); remove 'disaggregation' to serve over HTTP")
    cluster = Cluster(config, profile)
    return cluster.engines[0], cluster.decode


def _uvicorn_server(engine: Engine, router: Router | None = None,
                    tls: tuple[str, str] | None = None) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(engine, router), log_level="warning", access_log=False, lifespan="on",
        timeout_graceful_shutdown=2, ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )  # fmt: skip
    return uvicorn.Server(config)


def _write_atomic(path: str, text: str) -> None:
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purpose
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class ParentWatch:
    """The processes a server lives for: :meth:`gone` once any of them has exited. The
    real parent is checked by ``getppid()`` (immune to pid reuse), the others by pid."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = list(pids)
        self.parent = os.getppid()  # when started: our real parent
        self.orphaned = False

    def gone(self) -> bool:
        if not self.orphaned:
            self.orphaned = any(
                os.getppid() != pid if pid == self.parent else not _pid_alive(pid)
                for pid in self.pids)
        return self.orphaned


def _set_parent_death_signal(watch: ParentWatch) -> None:
    """Ask the kernel for a signal when the parent exits (Linux): it only triggers a
    check, since it also comes when the parent *thread* that started us ends."""
    if (not sys.platform.startswith("linux") or _PARENT_DEATH_SIGNAL is None
            or watch.parent not in watch.pids):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(_PARENT_DEATH_SIGNAL), 0, 0, 0)


async def _serve(
    server: uvicorn.Server, sock: socket.socket, ready_file: str | None, watch: ParentWatch
) -> None:
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started and ready_file:
        _write_atomic(ready_file, f"{sock.getsockname()[1]}\n")
    while watch.pids and not task.done():
        if watch.gone():
            server.should_exit = True
            break
        await asyncio.wait({task}, timeout=PARENT_CHECK_S)  # ends early on a stop
    await task


def main(argv: list[str] | None = None) -> int:
    """``python -m pytest_ctxplat.sim``: parse ``argv`` and :func:`serve`."""
    return serve(build_parser().parse_args(argv))


def serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT (or until a ``--parent-pid`` is gone). Returns the exit
    status (0 on a clean stop, 2 for bad arguments or config)."""
    watch = ParentWatch(list(args.parent_pid or []))
    try:
        return _serve_watched(args, watch)
    finally:
        if watch.orphaned and args.cleanup_dir:
            shutil.rmtree(args.cleanup_dir, ignore_errors=True)


def _serve_watched(args: argparse.Namespace, watch: ParentWatch) -> int:
    servers: list[uvicorn.Server] = []

    def on_parent_death(sig: int, frame: FrameType | None) -> None:
        if watch.gone():
            for server in servers:
                server.should_exit = True

    in_main_thread = threading.current_thread() is threading.main_thread()
    if watch.pids and in_main_thread and _PARENT_DEATH_SIGNAL is not None:
        signal.signal(_PARENT_DEATH_SIGNAL, on_parent_death)  # before asking for it
        _set_parent_death_signal(watch)
    if watch.gone():
        return 0
    try:
        config = config_from_args(args)
        engine, router = build_engines(config)
        sock = _bind(args.host, args.port)
    except (ConfigError, OSError) as exc:
        print(f"ctxplat-sim: {exc}", file=sys.stderr)
        return 2
    server = _uvicorn_server(engine, router)
    servers.append(server)

    def on_signal(sig: int, frame: FrameType | None) -> None:
        # active outside uvicorn's own handlers (and when uvicorn re-raises on exit)
        server.should_exit = True

    if in_main_thread:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
    with sock:
        asyncio.run(_serve(server, sock, args.ready_file, watch))
    return 0


class SimServerHandle:
    """A simulator served by uvicorn on a background thread (own event loop);
    ``tls``: serve https with this certificate (chain) and key file."""

    def __init__(self, config: SimConfig, host: str = "127.0.0.1", port: int = 0, *,
                 tls: tuple[str, str] | None = None) -> None:
        self.config = config
        self.engine, self.router = build_engines(config)
        self._server = _uvicorn_server(self.engine, self.router, tls)
        self._sock = _bind(host, port)
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://{host}:{self.port}"
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ctxplat-sim", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:
            self._error = exc

    def start(self, timeout: float = 10.0) -> SimServerHandle:
        self._thread.start()
        deadline = threading.Event()
        waited = 0.0
        while not self._server.started:
            if not self._thread.is_alive() or waited > timeout:
                self.close()
                raise SimulatorError(f"simulator did not start: {self._error!r}")
            deadline.wait(0.01)
            waited += 0.01
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop the server and wait for its thread (idempotent)."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> SimServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_in_thread(config: SimConfig | None = None) -> SimServerHandle:
    """Start a simulator on a free loopback port in a background thread and wait until it
    accepts connections. Use ``handle.url``; call ``handle.close()`` when done."""
    return SimServerHandle(config if config is not None else SimConfig()).start()
