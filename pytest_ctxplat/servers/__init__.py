"""Server backends: the embedded simulator, attach-by-URL, and launched servers."""

from .attach import AttachedServer
from .base import ServerHandle, ServerInfo
from .process import ManagedProcess, kill_all
from .sim import SimServer, start_sim

__all__ = [
    "AttachedServer",
    "ManagedProcess",
    "ServerHandle",
    "ServerInfo",
    "SimServer",
    "kill_all",
    "start_sim",
]
