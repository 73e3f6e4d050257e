"""Workload specifications: kinds, parameters, YAML files and marker overrides.

A workload *kind* is a frozen keyword-only dataclass (subclass of :class:`WorkloadSpec`)
registered under a name. A workload *definition* is a YAML file naming a kind and
setting some of its fields. The ``workload`` marker takes a kind or definition name plus
keyword overrides. Every unknown key, wrong type or impossible value raises
:class:`~pytest_ctxplat.errors.ConfigError` naming where it came from and what is valid.
"""

from __future__ import annotations

import dataclasses
import random
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ..errors import ConfigError
from .load import LoadShape
from .model import BlockIdAllocator, SessionPlan, TimedRequest

__all__ = [
    "WorkloadContext",
    "WorkloadSpec",
    "available_workloads",
    "coerce_fields",
    "load_workload",
    "register_kind",
    "resolve_workload",
]

_KINDS: dict[str, type[WorkloadSpec]] = {}


@dataclasses.dataclass(slots=True)
class WorkloadContext:
    """What a workload needs to generate sessions: seeded randomness and block ids."""

    seed: int
    ids: BlockIdAllocator = dataclasses.field(default_factory=BlockIdAllocator)
    shared: dict[object, Any] = dataclasses.field(default_factory=dict)

    def rng(self, *key: object) -> random.Random:
        """An independent, reproducible random stream for ``key`` (e.g. a user index)."""
        return random.Random(repr((self.seed, *key)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorkloadSpec:
    """Base of all workload kinds. Subclasses set ``kind`` and add their fields.

    Common fields bound the run: ``duration_s`` (stop starting requests after this many
    seconds; in-flight requests finish) and ``max_requests``. ``load`` shapes the load
    (:class:`~pytest_ctxplat.workload.load.LoadShape`: ramps, stages, open-loop arrivals,
    token budgets). ``designed_ttl_s`` and ``designed_capacity_tokens`` add designed hit
    rates for a cache with that TTL or capacity beside the infinite one.
    """

    kind: ClassVar[str] = ""
    users: int = 4
    duration_s: float | None = None
    max_requests: int | None = None
    block_size: int = 64
    output_tokens: int = 64
    api: str = "completions"
    load: LoadShape = dataclasses.field(default_factory=LoadShape)
    designed_ttl_s: tuple[float, ...] = ()
    designed_capacity_tokens: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _positive(self, "users", self.users)
        _positive(self, "block_size", self.block_size)
        _positive(self, "output_tokens", self.output_tokens)
        if self.duration_s is not None and self.duration_s <= 0:
            raise ConfigError(f"workload {self.kind!r}: duration_s must be > 0 or null")
        if self.max_requests is not None and self.max_requests <= 0:
            raise ConfigError(f"workload {self.kind!r}: max_requests must be > 0 or null")
        if any(t <= 0 for t in self.designed_ttl_s):
            raise ConfigError(f"workload {self.kind!r}: designed_ttl_s values must be > 0")
        if any(c <= 0 for c in self.designed_capacity_tokens):
            raise ConfigError(
                f"workload {self.kind!r}: designed_capacity_tokens values must be > 0")
        if self.api not in ("completions", "chat"):
            raise ConfigError(
                f"workload {self.kind!r}: api must be 'completions' or 'chat', got {self.api!r}"
            )

    def user_sessions(self, user: int, ctx: WorkloadContext) -> Iterator[SessionPlan]:
        """Sessions one user plays, in order. The runner stops pulling at its bounds."""
        raise NotImplementedError

    def prepare(self, ctx: WorkloadContext) -> None:
        """Do expensive set-up (reading a trace) before the run's clock starts."""

    def user_count(self) -> int:
        """How many closed-loop user tasks the runner starts."""
        return self.load.max_users(self.users)

    def timed_requests(self, ctx: WorkloadContext) -> Iterator[TimedRequest] | None:
        """Requests at fixed times, in time order (trace replay), or None: the workload
        is played by users (``user_sessions``)."""
        return None

    @property
    def bound_s(self) -> float | None:
        """The run's time bound: ``duration_s``, else the length of the load stages."""
        return self.duration_s if self.duration_s is not None else self.load.stages_duration_s

    def describe(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["kind"] = self.kind
        return d

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


def _positive(spec: WorkloadSpec, name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"workload {spec.kind!r}: {name} must be > 0, got {value!r}")


def register_kind(cls: type[WorkloadSpec]) -> type[WorkloadSpec]:
    """Class decorator: make a workload kind available by its ``kind`` name."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__} has no kind name")
    _KINDS[cls.kind] = cls
    return cls


def kinds() -> dict[str, type[WorkloadSpec]]:
    from . import agent, chat, replay, sessions, workingset  # noqa: F401  (register the built-in kinds)

    return dict(_KINDS)


def coerce_fields(
    cls: type[Any], values: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """Check ``values`` against the fields of dataclass ``cls``: unknown keys and values
    of the wrong type raise ConfigError naming ``where``, the key and the valid keys.
    Ints are accepted for float fields."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            valid = ", ".join(sorted(fields))
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys: {valid}")
        out[key] = _coerce(hints[key], value, f"{where}: {key}")
    return out


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        fields = coerce_fields(tp, value, where)
        try:
            return tp(**fields)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        except TypeError as exc:  # a missing required key
            raise ConfigError(f"{where}: {exc}") from None
    return value


def workload_dirs(extra: list[Path] | None = None) -> list[Path]:
    """Where workload YAML files are looked up: ``extra`` first, then the ``workloads/``
    folder that ships beside the package in a source checkout."""
    dirs = list(extra or [])
    dirs.append(Path(__file__).resolve().parents[2] / "workloads")
    return dirs


def available_workloads(extra_dirs: list[Path] | None = None) -> list[str]:
    names = set(kinds())
    for d in workload_dirs(extra_dirs):
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def _find_definition(name: str, dirs: list[Path]) -> Path | None:
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    for d in dirs:
        for suffix in (".yaml", ".yml"):
            p = d / f"{name}{suffix}"
            if p.is_file():
                return p
    return None


def load_workload(
    name: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    extra_dirs: list[Path] | None = None,
    where: str = "workload",
) -> WorkloadSpec:
    """Resolve ``name`` (a kind, a definition in a workload directory, or a YAML path)
    and apply ``overrides``. Raises ConfigError with the source of every bad value."""
    all_kinds = kinds()
    values: dict[str, Any] = {}
    source = where
    if name in all_kinds:
        cls = all_kinds[name]
    else:
        path = _find_definition(name, workload_dirs(extra_dirs))
        if path is None:
            valid = ", ".join(available_workloads(extra_dirs))
            raise ConfigError(f"{where}: unknown workload {name!r}; available: {valid}")
        cls, values = _read_definition(path, all_kinds)
        source = str(path)
    overrides = dict(overrides or {})
    if isinstance(values.get("load"), Mapping) and isinstance(overrides.get("load"), Mapping):
        overrides["load"] = {**values["load"], **overrides["load"]}  # merge, key by key
    fields = coerce_fields(cls, values, source)
    fields.update(coerce_fields(cls, overrides, where))
    try:
        return cls(**fields)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def resolve_workload(
    workload: str | WorkloadSpec,
    overrides: Mapping[str, Any] | None = None,
    *,
    extra_dirs: list[Path] | None = None,
    where: str = "workload",
) -> WorkloadSpec:
    """A workload spec from a name (see :func:`load_workload`) or a spec object, with
    ``overrides`` checked against its kind's fields like a marker's."""
    if not isinstance(workload, WorkloadSpec):
        return load_workload(workload, overrides, extra_dirs=extra_dirs, where=where)
    if not overrides:
        return workload
    fields = coerce_fields(type(workload), overrides, where)
    try:
        return dataclasses.replace(workload, **fields)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of each top-level key."""


def _read_definition(
    path: Path, all_kinds: Mapping[str, type[WorkloadSpec]]
) -> tuple[type[WorkloadSpec], dict[str, Any]]:
    try:
        node = yaml.compose(path.read_text(), Loader=_LineLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path}: a workload definition must be a mapping with a 'kind' key")
    data = yaml.safe_load(path.read_text())
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value}
    nested = {f"{k.value}: {k2.value}": k2.start_mark.line + 1
              for k, v in node.value if isinstance(v, yaml.MappingNode) for k2, _ in v.value}
    kind = data.pop("kind", None)
    data.pop("description", None)
    if kind not in all_kinds:
        valid = ", ".join(sorted(all_kinds))
        raise ConfigError(
            f"{path}:{lines.get('kind', 1)}: kind must be one of {valid}, got {kind!r}"
        )
    cls = all_kinds[kind]
    try:
        coerce_fields(cls, data, str(path))
    except ConfigError as exc:
        msg = str(exc)
        for key, line in [*sorted(nested.items(), key=lambda kv: -len(kv[0])), *lines.items()]:
            head, _, sub = key.partition(": ")
            if sub and (msg.startswith(f"{path}: {key}")
                        or msg.startswith(f"{path}: {head}: unknown key {sub!r}")):
                msg = msg.replace(f"{path}:", f"{path}:{line}:", 1)
                break
            if not sub and (msg.startswith(f"{path}: {key}")
                            or f"unknown key {key!r}" in msg):
                msg = msg.replace(f"{path}:", f"{path}:{line}:", 1)
                break
        raise ConfigError(msg) from None
    return cls, data
