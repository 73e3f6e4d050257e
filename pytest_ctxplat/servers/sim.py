"""Launch the embedded simulator as a child process on 127.0.0.1."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .base import ServerInfo
from .probe import Capabilities
from .process import ManagedProcess, make_temp_dir, owner_pids, remove_temp_dir

__all__ = ["SIM_CAPABILITIES", "SimServer", "apply_sim_set", "start_sim"]

# The simulator implements everything the capability probe looks for.
SIM_CAPABILITIES = Capabilities(token_id_prompts=True, chat=True, stream_usage=True,
                                cached_tokens=True, metrics=True, prefix_cache_metrics=True)


def apply_sim_set(settings: Mapping[str, Any], sim_set: Mapping[str, Any],
                  where: str = "--ctxplat-sim-set") -> dict[str, Any]:
    """``settings`` (SimConfig fields) with ``sim_set`` applied: a SimConfig field
    (``slowdown``, ``jitter``, ``speedup``, ...) is set; any other key is a dotted
    hardware-profile key (``tiers.1.capacity_gb``) added to ``profile_overrides``, which
    needs a ``profile``. The result is checked now: an error names ``where`` and the key."""
    from ..errors import ConfigError
    from ..sim.config import SimConfig
    from ..sim.hardware import load_hardware

    out = dict(settings)
    fields = SimConfig.field_names()
    for key, value in sim_set.items():
        if key in fields:
            out[key] = value
        elif out.get("profile") is None:
            raise ConfigError(f"{where}: {key}: unknown simulator key; valid: "
                              + ", ".join(fields) + " (or a dotted hardware-profile key "
                              "when the server's sim settings name a profile)")
        else:
            out["profile_overrides"] = {**(out.get("profile_overrides") or {}), key: value}
    config = SimConfig.from_mapping(out, where)
    if config.profile is not None and sim_set:
        load_hardware(config.profile, config.profile_overrides)
    return out


class SimServer:
    """The simulator in its own process group; it exits if this process dies (and then
    removes its temporary folder itself). ``close()`` stops it and removes the folder."""

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
        try:
            self.proc.stop()
        finally:
            remove_temp_dir(self.workdir)


def start_sim(
    settings: Mapping[str, Any] | None = None,
    *,
    log_dir: Path | None = None,
    profile: str = "sim",
    ready_timeout_s: float = 30.0,
) -> SimServer:
    """Start ``python -m pytest_ctxplat.sim`` with ``settings`` (SimConfig fields).

    The temporary folder (ready file, config, and the log unless ``log_dir`` is given)
    is removed by ``close()``, when the start fails, at interpreter exit, or by the
    simulator itself when this process (or, in a pytest-xdist worker, the controller)
    dies without a chance to clean up."""
    workdir = make_temp_dir("ctxplat-sim-")
    try:
        return _start(dict(settings or {}), workdir, log_dir or workdir, profile,
                      ready_timeout_s)
    except BaseException:
        remove_temp_dir(workdir)
        raise


def _start(settings: dict[str, Any], workdir: Path, log_dir: Path, profile: str,
           ready_timeout_s: float) -> SimServer:
    ready = workdir / "port"
    argv = [sys.executable, "-m", "pytest_ctxplat.sim", "--host", "127.0.0.1", "--port", "0",
            "--ready-file", str(ready), "--cleanup-dir", str(workdir)]
    for pid in owner_pids():
        argv += ["--parent-pid", str(pid)]
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

    try:
        base = proc.wait_ready(url, deadline_s=ready_timeout_s)
    except BaseException:
        proc.stop()
        raise
    info = ServerInfo(launcher="sim", url=base, profile=profile,
                      model=str(settings.get("model", "ctxplat-sim")), settings=settings,
                      time_scale=float(settings.get("speedup", 1.0)))
    return SimServer(proc, base, info, workdir)
