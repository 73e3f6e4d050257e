"""Built-in data, shipped in the wheel and read with :mod:`importlib.resources` (never
through paths of the source checkout).

* ``workloads`` (the project's top-level ``workloads/`` folder): workload definitions;
* ``servers`` (``fixtures/servers/``): server profiles;
* ``traces`` (``fixtures/traces/``): small sample traces;
* ``models.yaml`` and ``accelerators.yaml``: model shapes and GPUs (one table for the
  simulator and the analysis), ``hardware.yaml``: the simulator's hardware profiles,
  ``pricing.yaml``: price tables.

The package mapping is in ``pyproject.toml`` (``[tool.setuptools.package-dir]``).
Project-local definitions are looked up before these, by the loaders.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

__all__ = ["DATA", "SERVERS", "TRACES", "WORKLOADS", "find_yaml", "trace_path",
           "yaml_names"]

DATA = __name__
WORKLOADS = f"{__name__}.workloads"
SERVERS = f"{__name__}.servers"
TRACES = f"{__name__}.traces"


def yaml_names(package: str) -> list[str]:
    """Names (without ``.yaml``) of the YAML files in ``package``, sorted."""
    return sorted(p.name[:-5] for p in resources.files(package).iterdir()
                  if p.name.endswith(".yaml") and p.is_file())


def find_yaml(package: str, name: str) -> Traversable | None:
    """The built-in ``NAME.yaml`` (or ``.yml``) of ``package``, or None."""
    for suffix in (".yaml", ".yml"):
        item = resources.files(package).joinpath(name + suffix)
        if item.is_file():
            return item
    return None


def trace_path(relative: str) -> Path | None:
    """A shipped sample trace as a file path (``agent-session-small.json`` or
    ``fixtures/traces/agent-session-small.json``), or None."""
    rel = relative.removeprefix("fixtures/traces/").removeprefix("./")
    item = resources.files(TRACES).joinpath(rel)
    try:
        if not (item.is_file() or item.is_dir()):
            return None
    except (OSError, ValueError):  # not a name the file system takes (too long, a NUL)
        return None
    path = Path(str(item))  # installed unzipped (a wheel, or editable): a real path
    return path if path.exists() else None
