"""Resolving a workload name: a kind (``chat``), a definition (``coding-agent``: a YAML
file in a workload directory or among the built-ins) or a path to a YAML file; then
applying overrides (a marker's keywords, ``--set``).

Lookup order for definitions: the given directories (for pytest: the ini
``ctxplat_workload_dirs`` and the rootdir's ``workloads/``; for the CLI: the current
directory's ``workloads/``), then the definitions shipped in the package. Every error
names the file and line, or the override's source, and the key.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import builtin
from ..config import Source, build, layered, merge, parse_yaml, read_yaml, replace
from ..errors import ConfigError
from .kinds import KindRegistry
from .spec import WorkloadSpec

__all__ = ["available_workloads", "load_workload", "resolve_workload"]

_META_KEYS = ("kind", "description")


def _registry(kinds: KindRegistry | None) -> KindRegistry:
    return kinds if kinds is not None else KindRegistry.builtin()


def available_workloads(dirs: Sequence[Path] = (), kinds: KindRegistry | None = None
                        ) -> list[str]:
    """Kind names and definition names (from ``dirs`` and the built-ins), sorted."""
    names = set(_registry(kinds).names())
    for d in dirs:
        if Path(d).is_dir():
            names.update(p.stem for p in Path(d).glob("*.y*ml"))
    names.update(builtin.yaml_names(builtin.WORKLOADS))
    return sorted(names)


def _read_definition(name: str, dirs: Sequence[Path]) -> tuple[Any, Source, Path | None]:
    """The YAML of definition ``name`` (a path, or a name in ``dirs`` then the built-ins),
    its source, and its folder (None for a built-in)."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml"):
        data, src = read_yaml(candidate)  # "file not found: PATH" if missing
        return data, src, candidate.parent
    for d in dirs:
        for suffix in (".yaml", ".yml"):
            p = Path(d) / f"{name}{suffix}"
            if p.is_file():
                data, src = read_yaml(p)
                return data, src, p.parent
    item = builtin.find_yaml(builtin.WORKLOADS, name)
    if item is None:
        raise LookupError(name)
    data, src = parse_yaml(item.read_text(encoding="utf-8"), f"<built-in>/{item.name}")
    return data, src, None


def load_workload(
    name: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    dirs: Sequence[Path] = (),
    kinds: KindRegistry | None = None,
    where: str = "workload",
) -> WorkloadSpec:
    """Resolve ``name`` and apply ``overrides`` (from ``where``, e.g. a test id)."""
    registry = _registry(kinds)
    overrides = dict(overrides or {})
    over_src = Source(where)
    cls = registry.get(name)
    if cls is not None:
        return build(cls, overrides, over_src)
    try:
        data, src, folder = _read_definition(name, dirs)
    except LookupError:
        valid = ", ".join(available_workloads(dirs, registry))
        raise ConfigError(f"{where}: unknown workload {name!r}; available: {valid}") from None
    if not isinstance(data, Mapping) or "kind" not in data:
        raise src.error("", "a workload definition is a mapping with a 'kind' key")
    kind = data["kind"]
    cls = registry.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise src.error("kind", f"unknown kind {kind!r}", ", ".join(registry.names()))
    values = {k: v for k, v in data.items() if k not in _META_KEYS}
    if folder is not None:
        values = _relative_paths(cls, values, folder)
    values = cls.defer_to_overrides(values, overrides)
    return build(cls, merge(values, overrides), layered(src, over_src, overrides))


def _relative_paths(cls: type[WorkloadSpec], values: dict[str, Any], folder: Path
                    ) -> dict[str, Any]:
    """Fields declared with ``path=True`` metadata: a relative path that does not exist
    from the working directory is taken relative to the definition's folder."""
    out = dict(values)
    for f in dataclasses.fields(cls):
        v = out.get(f.name)
        # os.path.exists never raises (a name too long for the file system, a NUL)
        if f.metadata.get("path") and isinstance(v, str) and v and not Path(v).is_absolute() \
                and not os.path.exists(v) and os.path.exists(folder / v):
            out[f.name] = str(folder / v)
    return out


def resolve_workload(
    workload: str | WorkloadSpec,
    overrides: Mapping[str, Any] | None = None,
    *,
    dirs: Sequence[Path] = (),
    kinds: KindRegistry | None = None,
    where: str = "workload",
) -> WorkloadSpec:
    """A spec from a name (see :func:`load_workload`) or a spec object, with
    ``overrides`` checked against its kind's fields like a marker's."""
    if isinstance(workload, WorkloadSpec):
        return replace(workload, overrides or {}, where)
    return load_workload(workload, overrides, dirs=dirs, kinds=kinds, where=where)
