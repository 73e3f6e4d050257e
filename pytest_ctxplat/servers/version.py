"""What engine a server runs: ``GET /version`` (vLLM, the simulator), for provenance."""

from __future__ import annotations

from typing import Any

import httpx

from .base import ServerHandle

__all__ = ["engine_version"]


def engine_version(handle: ServerHandle, timeout_s: float = 3.0) -> dict[str, Any] | None:
    """``{"name": ..., "version": ...}`` from the server's ``/version`` (vLLM answers
    ``{"version": "0.x"}``, the simulator adds its name); None when it does not say."""
    try:
        resp = httpx.get(handle.url.rstrip("/") + "/version", headers=handle.headers(),
                         timeout=timeout_s)
        data = resp.json() if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("version"), str):
        return None
    name = data.get("name") if isinstance(data.get("name"), str) else (
        "vllm" if handle.info.launcher.startswith("vllm") else handle.info.launcher)
    return {"name": name, "version": data["version"]}
