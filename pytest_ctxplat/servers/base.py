"""What every server backend provides to the driver and the plugin."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["ServerHandle", "ServerInfo"]


@dataclass(frozen=True, kw_only=True)
class ServerInfo:
    """Description of a server under test, as written into results (never secrets)."""

    launcher: str  # "sim", "url", "vllm", "vllm-cpu"
    url: str
    profile: str
    model: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "launcher": self.launcher,
            "url": self.url,
            "profile": self.profile,
            "model": self.model,
            "settings": self.settings,
        }


class ServerHandle(Protocol):
    info: ServerInfo

    @property
    def url(self) -> str: ...

    def headers(self) -> dict[str, str]:
        """Headers for requests (e.g. Authorization); never logged or written."""
        ...

    def alive(self) -> bool: ...

    def log_tail(self, lines: int = 40) -> str: ...

    def close(self) -> None: ...
