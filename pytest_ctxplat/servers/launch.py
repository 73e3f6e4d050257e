"""Start (or attach to) the server a profile describes."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .attach import AttachedServer
from .base import ServerHandle
from .profiles import ServerProfile
from .sim import start_sim

__all__ = ["start_profile"]


def start_profile(profile: ServerProfile, *, log_dir: Path, rootdir: Path | None = None,
                  seed: int = 0, sim_speedup: float = 1.0) -> ServerHandle:
    """A ready server for ``profile``. Simulator profiles get ``seed`` and ``sim_speedup``
    unless their ``sim`` settings fix them."""
    data = profile.data
    if profile.launcher == "sim":
        settings = {"speedup": sim_speedup, "seed": seed, **(data.get("sim") or {})}
        if data.get("model"):
            settings.setdefault("model", data["model"])
        server = start_sim(settings, log_dir=log_dir, profile=profile.name,
                           ready_timeout_s=float(data.get("ready_timeout_s") or 30.0))
        server.reset_cache = data.get("reset_cache")
        return server
    if profile.launcher == "url":
        return AttachedServer(str(data["url"]), api_key_env=data.get("api_key_env"),
                              model=data.get("model"), profile=profile.name,
                              reset_cache=data.get("reset_cache"))
    if profile.launcher in ("vllm", "vllm-cpu"):
        from .vllm import start_vllm

        return start_vllm(profile, log_dir=log_dir, rootdir=rootdir)
    raise ConfigError(f"{profile.source}: unknown launcher {profile.launcher!r}")
