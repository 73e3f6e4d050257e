"""Extension hooks of pytest-ctxplat (pluggy hookspecs, registered by the plugin).

Implement them in a ``conftest.py`` or a plugin to add server launchers, workload kinds
or result sinks. The built-in launchers and workload kinds come in through the same
registries (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .report.result import RunResult
    from .servers.base import ServerHandle
    from .servers.launchers import Launcher


@pytest.hookspec
def pytest_ctxplat_launchers() -> Mapping[str, Launcher]:
    """Return launcher kinds this plugin adds: ``{"mykind": launch}``, where
    ``launch(profile, context)`` returns a started
    :class:`~pytest_ctxplat.servers.base.ServerHandle`. A server profile selects one with
    ``launcher: mykind`` (its own settings go under ``options:``); the profile is
    validated like every other. A kind registered twice is a usage error."""
    return {}


@pytest.hookspec(firstresult=True)
def pytest_ctxplat_start_server(config: pytest.Config, name: str) -> ServerHandle | None:
    """Start (or attach to) the server called ``name`` (a ``--ctxplat-server`` or
    ``servers(...)`` value, already checked to be a known profile).

    The built-in implementation runs last (``trylast``): it reads the profile and starts
    it with the launcher its ``launcher`` key names. Return a handle to take over, or
    None to let the next implementation try. The first non-None result wins.
    """
    return None


@pytest.hookspec
def pytest_ctxplat_workload_kinds() -> list[type[Any]]:
    """Return workload kind classes (subclasses of ``WorkloadSpec`` with a ``kind`` name)
    to register for this session, beside the built-in kinds. A kind name registered
    twice is a usage error naming both classes."""
    return []


@pytest.hookspec
def pytest_ctxplat_result(config: pytest.Config, item: pytest.Item, result: RunResult) -> None:
    """Called with every run result right after it is measured and written, before the
    SLO is judged: a result sink (dashboards, databases, custom files)."""
