"""Server backends: the embedded simulator, attach-by-URL, and launched servers (vLLM),
all described by server profiles (``fixtures/servers/*.yaml``)."""

from .attach import AttachedServer
from .base import ServerHandle, ServerInfo
from .launch import start_profile
from .probe import Capabilities, probe_capabilities
from .process import ManagedProcess, kill_all
from .profiles import ServerProfile, available_profiles, find_profile, load_profile
from .sim import SimServer, start_sim
from .vllm import VllmServer, build_launch, start_vllm

__all__ = [
    "AttachedServer",
    "Capabilities",
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
    "start_profile",
    "start_sim",
    "start_vllm",
]
