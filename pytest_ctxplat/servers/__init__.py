"""Server backends: the embedded simulator, attach-by-URL, and launched servers (vLLM),
all described by server profiles (``fixtures/servers/*.yaml``) and started through a
:class:`~pytest_ctxplat.servers.launchers.LauncherRegistry`."""

from .attach import AttachedServer
from .base import ServerHandle, ServerInfo
from .launchers import LaunchContext, Launcher, LauncherRegistry
from .probe import Capabilities, probe_capabilities
from .process import ManagedProcess, kill_all
from .profiles import ServerProfile, available_profiles, find_profile, load_profile
from .sim import SimServer, start_sim
from .vllm import VllmServer, build_launch, start_vllm

__all__ = [
    "AttachedServer",
    "Capabilities",
    "LaunchContext",
    "Launcher",
    "LauncherRegistry",
    "ManagedProcess",
    "ServerHandle",
    "ServerInfo",
    "ServerProfile",
    "SimServer",
    "VllmServer",
    "available_profiles",
    "build_launch",
    "find_profile",
    "kill_all",
    "load_profile",
    "probe_capabilities",
    "start_sim",
    "start_vllm",
]
