"""Attach to an already running OpenAI-compatible server by URL."""

from __future__ import annotations

import os

from ..errors import ConfigError
from .base import ServerInfo
from .probe import Capabilities

__all__ = ["AttachedServer"]


class AttachedServer:
    """A server someone else runs. An API key is read from the environment variable
    named by ``api_key_env`` and used only in request headers."""

    def __init__(self, url: str, *, api_key_env: str | None = None, model: str | None = None,
                 profile: str = "url", reset_cache: bool | None = None):
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--ctxplat-url must start with http:// or https://, got {url!r}")
        self._url = url.rstrip("/")
        if self._url.endswith("/v1"):
            self._url = self._url[:-3]
        self._key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not self._key:
            raise ConfigError(f"environment variable {api_key_env} (the API key) is not set")
        self.info = ServerInfo(launcher="url", url=self._url, profile=profile, model=model,
                               settings={"api_key_env": api_key_env} if api_key_env else {})
        self.reset_cache = reset_cache
        self.capabilities: Capabilities | None = None

    @property
    def url(self) -> str:
        return self._url

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"} if self._key else {}

    def alive(self) -> bool:
        return True

    def log_tail(self, lines: int = 40) -> str:
        return ""

    def close(self) -> None:
        return None
