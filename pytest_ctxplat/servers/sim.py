"""Launch the embedded simulator as a child process on 127.0.0.1."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .base import ServerInfo
from .probe import Capabilities
from .process import ManagedProcess

__all__ = ["SIM_CAPABILITIES", "SimServer", "start_sim"]

# The simulator implements everything the capability probe looks for.
SIM_CAPABILITIES = Capabilities(token_id_prompts=True, chat=True, stream_usage=True,
                                cached_tokens=True, metrics=True, prefix_cache_metrics=True)


class SimServer:
    """The simulator in its own process group; it exits if this process dies."""

    def __init__(self, proc: ManagedProcess, url: str, info: ServerInfo, workdir: Path) -> None:
        self.proc = proc
        self._url = url
        self.info = info
        self.workdir = workdir
        self.reset_cache: bool | None = None  # None: follow --ctxplat-reset-cache
        self.capabilities: Capabilities | None = SIM_CAPABILITIES  # no need to ask

    @property
    def url(self) -> str:
        return self._url

    def headers(self) -> dict[str, str]:
        return {}

    def alive(self) -> bool:
        return self.proc.alive()

    def log_tail(self, lines: int = 40) -> str:
        return self.proc.log_tail(lines)

    def close(self) -> None:
        self.proc.stop()


def start_sim(
    settings: Mapping[str, Any] | None = None,
    *,
    log_dir: Path | None = None,
    profile: str = "sim",
    ready_timeout_s: float = 30.0,
) -> SimServer:
    """Start ``python -m pytest_ctxplat.sim`` with ``settings`` (SimConfig fields)."""
    workdir = Path(tempfile.mkdtemp(prefix="ctxplat-sim-"))
    log_dir = log_dir or workdir
    ready = workdir / "port"
    argv = [sys.executable, "-m", "pytest_ctxplat.sim", "--host", "127.0.0.1", "--port", "0",
            "--ready-file", str(ready), "--parent-pid", str(os.getpid())]
    settings = dict(settings or {})
    if settings:
        cfg = workdir / "sim.yaml"
        cfg.write_text(yaml.safe_dump(settings))
        argv += ["--config", str(cfg)]
    proc = ManagedProcess(argv, log_dir / f"server-{profile}.log")

    def url() -> str | None:
        try:
            port = int(ready.read_text().strip())
        except (OSError, ValueError):
            return None
        return f"http://127.0.0.1:{port}"

    base = proc.wait_ready(url, deadline_s=ready_timeout_s)
    info = ServerInfo(launcher="sim", url=base, profile=profile,
                      model=str(settings.get("model", "ctxplat-sim")), settings=settings,
                      time_scale=float(settings.get("speedup", 1.0)))
    return SimServer(proc, base, info, workdir)
