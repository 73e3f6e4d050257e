"""The pytest plugin's per-run state, kept in ``config.stash`` and ``item.stash``: the
effective settings of the session and each test's parsed markers. Its own module so the
plugin and the code it calls share it without importing each other."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .slo import SLOSpec
    from .workload.spec import WorkloadSpec

__all__ = ["ItemSpec", "Settings", "item_key", "settings_key"]


@dataclasses.dataclass
class Settings:
    """Effective settings of this pytest run (options over ini values over defaults)."""

    server: str
    url: str | None
    api_key_env: str | None
    results: Path
    seed: int
    sim_speedup: float
    reset_cache: bool
    workload_dirs: list[Path]
    model: str | None
    servers: list[str] = dataclasses.field(default_factory=list)  # --ctxplat-server a,b
    profile_dirs: list[Path] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ItemSpec:
    slo: SLOSpec | None
    workload: WorkloadSpec | None


settings_key = pytest.StashKey[Settings]()
item_key = pytest.StashKey[ItemSpec]()
