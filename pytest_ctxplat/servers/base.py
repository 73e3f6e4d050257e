"""What every server backend provides to the orchestrator and the plugin."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .probe import Capabilities

__all__ = ["ServerHandle", "ServerInfo"]


@dataclass(frozen=True, kw_only=True)
class ServerInfo:
    """Description of a server under test, as written into results (never secrets).

    ``time_scale`` is model seconds per real second: the simulator's ``speedup`` (it
    runs that many times faster than the model it times), 1 for real servers.
    """

    launcher: str  # "sim", "url", "vllm", "vllm-cpu", or a plugin's launcher name
    url: str
    profile: str
    model: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    time_scale: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "launcher": self.launcher,
            "url": self.url,
            "profile": self.profile,
            "model": self.model,
            "settings": self.settings,
            "time_scale": self.time_scale,
        }


class ServerHandle(Protocol):
    """A started (or attached) server. A launcher (the ``pytest_ctxplat_start_server``
    hook) returns one; the orchestrator reads exactly these members.

    ``reset_cache``: None follows the ``--ctxplat-reset-cache`` option; True/False
    overrides it for this server. ``capabilities``: what the capability probe found,
    filled in on first use (None until then; a launcher that knows may set it).
    Optional members the cache-state fixtures use where present: ``reset_stores()``
    (empty KV stores the server's own reset leaves alone; returns what it emptied) and
    ``restart()`` (stop and start again, keeping a disk store).
    """

    info: ServerInfo
    reset_cache: bool | None
    capabilities: Capabilities | None

    @property
    def url(self) -> str: ...

    def headers(self) -> dict[str, str]:
        """Headers for requests (e.g. Authorization); never logged or written."""
        ...

    def alive(self) -> bool: ...

    def log_tail(self, lines: int = 40) -> str: ...

    def close(self) -> None: ...
