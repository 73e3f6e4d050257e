"""Extension hooks of pytest-ctxplat (pluggy hookspecs, registered by the plugin).

Implement them in a ``conftest.py`` or a plugin to add server launchers, workload kinds
or result sinks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .report.result import RunResult
    from .servers.base import ServerHandle


@pytest.hookspec(firstresult=True)
def pytest_ctxplat_start_server(config: pytest.Config, name: str) -> ServerHandle | None:
    """Start (or attach to) the server called ``name`` (the ``--ctxplat-server`` value).

    Return a handle with ``url``, ``info``, ``headers()``, ``alive()``, ``log_tail()`` and
    ``close()``, or None to let other implementations (and the built-ins) try. The first
    non-None result wins.
    """
    return None


@pytest.hookspec
def pytest_ctxplat_workload_kinds() -> list[type[Any]]:
    """Return workload kind classes (subclasses of ``WorkloadSpec`` with a ``kind`` name)
    to register before markers are parsed."""
    return []


@pytest.hookspec
def pytest_ctxplat_result(config: pytest.Config, item: pytest.Item, result: RunResult) -> None:
    """Called with every run result right after it is measured and written, before the
    SLO is judged: a result sink (dashboards, databases, custom files)."""
