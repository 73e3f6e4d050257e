"""One way to read configuration: YAML with line numbers into frozen dataclasses with
declared constraints.

Every configuration the package reads goes through here: workload definitions and
marker overrides, server profiles, simulator hardware profiles, ``SimConfig``,
calibration and price files, SLO markers. So every error looks the same and says where::

    workloads/mine.yaml:4: users: must be > 0, got -4
    fixtures/servers/x.yaml:7: kv.offload.size_gib: must be a number, got 'big'
    test_x.py::test_y: ttft_p95: unknown key; valid: e2e_p95_ms, ... ttft_p95_ms, ...

* :func:`read_yaml` / :func:`parse_yaml` / :func:`read_resource` read one YAML document
  with a safe loader; duplicate keys are errors; a missing file is "file not found";
  the result carries a :class:`Source` that knows the line of every key path.
* :func:`build` turns a mapping into a dataclass: unknown keys, wrong types (checked
  against the type hints) and values outside the constraints declared with
  :func:`setting` are :class:`~pytest_ctxplat.errors.ConfigError` naming the file, line
  and key. Cross-field checks raise :class:`FieldError` from the dataclass's
  ``validate()`` (see :class:`Validated`) and are located the same way.
* :func:`replace` applies overrides (a marker's, ``--set``) to an object, located by
  their own source.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError

__all__ = [
    "FieldError",
    "Source",
    "Validated",
    "build",
    "check_constraints",
    "key_paths",
    "layered",
    "merge",
    "parse_yaml",
    "read_resource",
    "read_yaml",
    "replace",
    "set_dotted",
    "setting",
]

T = TypeVar("T")
_META = "ctxplat"
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class FieldError(ConfigError):
    """A bad value of ``key`` (a dotted path relative to the object being checked).

    Raised by ``validate()`` methods; :func:`build` and :func:`replace` re-raise it as a
    :class:`~pytest_ctxplat.errors.ConfigError` located at the key's file and line.
    """

    def __init__(self, key: str, problem: str, valid: str | None = None) -> None:
        self.key = key
        self.problem = problem
        self.valid = valid
        super().__init__(_message("", key, problem, valid))


def _message(where: str, key: str, problem: str, valid: str | None) -> str:
    parts = [p for p in (where, key) if p]
    text = ": ".join([*parts, problem])
    return f"{text}; valid: {valid}" if valid else text


def _join(path: str, key: object) -> str:
    key = "''" if isinstance(key, str) and not key else key  # an empty key, named
    return f"{path}.{key}" if path else str(key)


@dataclasses.dataclass(frozen=True)
class Source:
    """Where configuration came from: a file (with the line of every key path, such as
    ``kv.offload.size_gib`` or ``tiers.1.read_gbs``) or a description (a test id, a
    command-line option)."""

    name: str
    lines: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def at(self, path: str) -> str:
        """``FILE:LINE`` of ``path`` (its nearest located parent), or the name."""
        if not self.lines:
            return self.name
        p = path
        while p:
            if p in self.lines:
                return f"{self.name}:{self.lines[p]}"
            p = p.rpartition(".")[0]
        return f"{self.name}:{self.lines.get('', 1)}"

    def error(self, path: str, problem: str, valid: str | None = None) -> ConfigError:
        return ConfigError(_message(self.at(path), path, problem, valid))

    def sub(self, prefix: str) -> Source:
        """The source of the mapping at ``prefix`` (its keys become top-level)."""
        if not self.lines:
            return self
        head = prefix + "."
        lines = {k[len(head):]: v for k, v in self.lines.items() if k.startswith(head)}
        lines[""] = self.lines.get(prefix, self.lines.get("", 1))
        return Source(self.name, lines)


@dataclasses.dataclass(frozen=True)
class _Layered(Source):
    """Values from ``base`` with ``over`` (overrides) on top: a key is located in the
    layer that supplied it."""

    base: Source = dataclasses.field(default_factory=lambda: Source(""))
    over: Source = dataclasses.field(default_factory=lambda: Source(""))
    over_data: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def at(self, path: str) -> str:
        node: Any = self.over_data
        for part in path.split(".") if path else ():
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, Mapping) and part in node:
                node = node[part]
            else:
                return self.base.at(path)
        return self.over.at(path) if path else self.base.at(path)


# -- YAML -----------------------------------------------------------------------------
_BREAK = re.compile(r"\r\n?|\n")


class _Loader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys and numbers lines as editors do (YAML
    also breaks lines at U+0085, U+2028 and U+2029)."""

    def __init__(self, text: str) -> None:
        ends = [m.end() for m in _BREAK.finditer(text)]
        self.line_at: Callable[[int], int] = lambda i: bisect.bisect_right(ends, i) + 1
        super().__init__(text)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            key = self.construct_object(key_node, deep=True)
            line = self.line_at(key_node.start_mark.index)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key]})",
                    key_node.start_mark)
            if isinstance(key, typing.Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            # '!!int x', '!!bool x', '2024-13-45' (a date that is none): a located error
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {_show(node.value)} as !!"
                f"{node.tag.rpartition(':')[2]} ({exc})", node.start_mark) from None


def _lines(node: yaml.Node | None, name: str, loader: _Loader) -> dict[str, int]:
    """The line of every key path as :func:`build` names it (``None`` for ``~``); a node
    reached again through an alias is not walked again, one holding itself is refused."""
    out: dict[str, int] = {"": 1 if node is None else loader.line_at(node.start_mark.index)}
    done: set[int] = set()
    stack: set[int] = set()

    def walk(n: yaml.Node, prefix: str) -> None:
        if id(n) in stack:
            raise ConfigError(f"{name}:{loader.line_at(n.start_mark.index)}: invalid YAML: "
                              "this node contains an alias to itself")
        if id(n) in done or not isinstance(n, yaml.CollectionNode):
            return
        done.add(id(n))
        stack.add(id(n))
        pairs = n.value if isinstance(n, yaml.MappingNode) else enumerate(n.value)
        for k, v in pairs:
            key = loader.construct_object(k, deep=True) if isinstance(k, yaml.Node) else k
            path = _join(prefix, key)
            out.setdefault(path, loader.line_at((k if isinstance(k, yaml.Node) else v)
                                                .start_mark.index))  # (false, 'False')
            walk(v, path)
        stack.discard(id(n))

    if node is not None:
        walk(node, "")
    return out


def parse_yaml(text: str, name: str) -> tuple[Any, Source]:
    """One YAML document read with a safe loader (duplicate keys refused) and its
    :class:`Source` named ``name``."""
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:  # a control character: no mark, a position
        raise ConfigError(f"{name}:{len(_BREAK.findall(text, 0, exc.position)) + 1}: "
                          f"invalid YAML: {exc.reason}, got U+{exc.character:04X}") from None
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
        lines = _lines(node, name, loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{loader.line_at(mark.index)}" if mark is not None else ""
        raise ConfigError(f"{name}{line}: invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: invalid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{name}:{loader.line_at(loader.index)}: invalid YAML: nested "
                          "too deeply") from None
    finally:
        loader.dispose()
    return data, Source(name, lines)


def read_yaml(path: str | Path) -> tuple[Any, Source]:
    """Read one YAML file (see :func:`parse_yaml`); a missing file is "file not found"."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"file not found: {p}") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL character in the path
        raise ConfigError(f"{p}: cannot read: {getattr(exc, 'strerror', 0) or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = len(re.findall(rb"\r\n?|\n", raw[:exc.start])) + 1
        raise ConfigError(f"{p}:{line}: not UTF-8 text: byte 0x{raw[exc.start]:02x} "
                          f"({exc.reason})") from None
    return parse_yaml(text, str(p))


def read_resource(package: str, name: str) -> tuple[Any, Source]:
    """Read a YAML file shipped in ``package`` (with :mod:`importlib.resources`)."""
    text = resources.files(package).joinpath(name).read_text(encoding="utf-8")
    return parse_yaml(text, f"{package.replace('.', '/')}/{name}")


# -- declared constraints ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Constraint:
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    non_empty: bool = False

    def check(self, key: str, value: Any) -> None:
        if value is None:
            return
        if self.choices is not None and value not in self.choices:
            raise FieldError(key, f"must be one of {', '.join(map(str, self.choices))}, "
                                  f"got {value!r}")
        if self.non_empty and not value:
            raise FieldError(key, "must not be empty")
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            for bound, ok, word in ((self.ge, v >= (self.ge or 0), ">="),
                                    (self.gt, v > (self.gt or 0), ">"),
                                    (self.le, v <= (self.le or 0), "<="),
                                    (self.lt, v < (self.lt or 0), "<")):
                if bound is not None and not ok:
                    raise FieldError(key, f"must be {word} {bound:g}, got {v!r}")


def setting(default: Any = dataclasses.MISSING, *,
            default_factory: Any = dataclasses.MISSING, ge: float | None = None,
            gt: float | None = None, le: float | None = None, lt: float | None = None,
            choices: Sequence[Any] | None = None, non_empty: bool = False,
            doc: str = "", **metadata: Any) -> Any:
    """A dataclass field with declared constraints (checked by :func:`check_constraints`
    for every value, including each item of a tuple), a one-line ``doc`` and further
    ``metadata`` (``path=True``: a path relative to the file that sets it;
    ``internal=True``: not settable from configuration data)."""
    meta = {_META: _Constraint(ge=ge, gt=gt, le=le, lt=lt,
                               choices=tuple(choices) if choices is not None else None,
                               non_empty=non_empty), "doc": doc, **metadata}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def check_constraints(obj: Any) -> None:
    """Check the values of dataclass ``obj``: plain types against its hints (an object
    built in Python, not through :func:`build`, gets no coercion) and the constraints
    declared with :func:`setting`; raise :class:`FieldError` for the first one broken."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        problem = _type_problem(hints.get(f.name, Any), value)
        if problem is not None:
            raise FieldError(f.name, problem)
        c = f.metadata.get(_META)
        if c is not None:
            c.check(f.name, value)


_PLAIN = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}


def _type_problem(tp: Any, value: Any) -> str | None:
    """Why ``value`` is not of plain type ``tp`` (None: it is, or ``tp`` is not plain)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        plain = [a for a in args if a in _PLAIN]
        if len(plain) != len(args) - (type(None) in args):
            return None  # not all plain: leave it to the type checker
        tp = plain[0] if len(plain) == 1 else None
        if tp is None:
            return None
    allowed = _PLAIN.get(tp)
    if allowed is None:
        return None
    if isinstance(value, bool) and tp is not bool:
        return f"must be {_type_name(tp)}, got {_show(value)}"
    return None if isinstance(value, allowed) else f"must be {_type_name(tp)}, got {_show(value)}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Validated:
    """Base of configuration dataclasses: on construction, the declared constraints are
    checked, then ``validate()`` (cross-field checks raising :class:`FieldError`)."""

    def __post_init__(self) -> None:
        check_constraints(self)
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; raise :class:`FieldError` naming the key."""


# -- building dataclasses ---------------------------------------------------------------
_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _show(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an integer too long to convert to text
        return f"an integer of about {value.bit_length() * 0.30103:.0f} digits"
    return text if len(text) <= 80 else text[:77] + "..."


def _type_name(tp: Any) -> str:
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, src: Source, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        first: ConfigError | None = None
        for arg in options:
            try:
                return _coerce(arg, value, src, path)
            except ConfigError as exc:
                first = first or exc
        if len(options) == 1 or first is None:
            raise first or src.error(path, f"invalid value {_show(value)}")
        raise src.error(path, f"must be {' or '.join(map(_type_name, options))}, "
                              f"got {_show(value)}")
    if origin is typing.Literal:
        if value not in args:
            raise src.error(path, f"must be one of {', '.join(map(str, args))}, "
                                  f"got {_show(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise src.error(path, f"must be true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise src.error(path, f"must be an integer, got {_show(value)}")
        if not -(2**63) <= value < 2**63:
            raise src.error(path, f"must be a 64-bit integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e9 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise src.error(path, f"must be a number, got {_show(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            number = math.inf
        if not math.isfinite(number):
            raise src.error(path, f"must be a finite number, got {_show(value)}")
        return number
    if tp is str:
        if isinstance(value, (datetime.date, datetime.time)):
            value = value.isoformat()  # YAML reads an unquoted date as a date
        if not isinstance(value, str):
            raise src.error(path, f"must be a string, got {_show(value)}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise src.error(path, f"must be a path, got {_show(value)}")
        return Path(value)
    if origin in (tuple, list) or tp in (tuple, list):
        item = args[0] if args else Any
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) \
                and origin is tuple:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise src.error(path, f"must be a list, got {_show(value)}")
        items = [_coerce(item, v, src, _join(path, i)) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        key_tp, val_tp = args if args else (Any, Any)
        if not isinstance(value, Mapping):
            raise src.error(path, f"must be a mapping, got {_show(value)}")
        return {_coerce(key_tp, k, src, _join(path, k)): _coerce(val_tp, v, src, _join(path, k))
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        return build(tp, value, src, path)
    return value


def build(cls: type[T], data: Any, source: Source | str, path: str = "") -> T:
    """An instance of dataclass ``cls`` from mapping ``data`` read from ``source``
    (``path``: where the mapping sits in the source, for nested objects). Every error is
    a ConfigError naming the source (file and line), the key, the problem and what is
    valid. A key set to null takes its default (unless null is a valid value); fields
    with ``internal`` metadata cannot be set from data."""
    src = source if isinstance(source, Source) else Source(source)
    if not isinstance(data, Mapping):
        raise src.error(path, f"must be a mapping, got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)  # type: ignore[arg-type]
              if f.init and not f.metadata.get("internal")}
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        kp = _join(path, key)
        if key not in fields:
            raise src.error(kp, "unknown key", ", ".join(sorted(fields)))
        if value is None and not _allows_none(hints[key]) and _has_default(fields[key]):
            continue  # null: the default
        kwargs[key] = _coerce(hints[key], value, src, kp)
        constraint = fields[key].metadata.get(_META)
        if constraint is not None:
            try:  # checked here too, so a bad value is named before a missing key
                constraint.check(key, kwargs[key])
            except FieldError as exc:
                raise src.error(kp, exc.problem, exc.valid) from None
    for name, f in fields.items():
        if name not in kwargs and not _has_default(f):
            raise src.error(_join(path, name), "required key is missing")
    try:
        return cls(**kwargs)
    except FieldError as exc:
        raise src.error(_join(path, exc.key), exc.problem, exc.valid) from None


def _allows_none(tp: Any) -> bool:
    return tp is Any or (typing.get_origin(tp) in (typing.Union, types.UnionType)
                         and type(None) in typing.get_args(tp))


def _has_default(f: dataclasses.Field[Any]) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def key_paths(cls: type[Any], prefix: str = "") -> list[str]:
    """Every settable key of dataclass ``cls`` as a dotted path, nested dataclasses
    included (``kv``, ``kv.offload``, ``kv.offload.size_gib``, ...): for docs and checks."""
    out: list[str] = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("internal"):
            continue
        path = _join(prefix, f.name)
        out.append(path)
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        for a in inner:
            if dataclasses.is_dataclass(a) and isinstance(a, type):
                out += key_paths(a, path)
    return out


def replace(obj: T, overrides: Mapping[str, Any], source: Source | str) -> T:
    """``obj`` with ``overrides`` applied (checked like :func:`build`; a mapping given
    for a nested dataclass field is merged into it key by key)."""
    if not overrides:
        return obj
    return build(type(obj), merge(_as_mapping(obj), overrides), source)


def _as_mapping(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` on top; nested mappings (and a mapping given for a
    dataclass value) are merged key by key."""
    out = dict(base)
    for k, v in over.items():
        cur = out.get(k)
        if isinstance(v, Mapping) and dataclasses.is_dataclass(cur) and \
                not isinstance(cur, type):
            out[k] = merge(_as_mapping(cur), v)
        elif isinstance(v, Mapping) and isinstance(cur, Mapping):
            out[k] = merge(cur, v)
        else:
            out[k] = v
    return out


def layered(base: Source, over: Source, over_data: Mapping[str, Any]) -> Source:
    """A source for values merged from ``base`` with ``over_data`` (from ``over``) on
    top: each key is located in the layer that supplied it."""
    return _Layered(base.name, base.lines, base=base, over=over, over_data=over_data)


def set_dotted(data: dict[str, Any], key: str, value: Any, where: str) -> None:
    """Set ``a.b.0.c`` in nested mappings and lists (copying what it changes)."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"{where}: {key or repr(key)}: not a dotted key (a part is "
                          "empty)")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{where}: {key}: no list item {part!r} "
                                  f"(the list has {len(node)} items)")
            idx = int(part)
            if last:
                node[idx] = value
            else:
                node[idx] = _copy(node[idx])
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node[part] = _copy(node.get(part, {}))
                node = node[part]
        else:
            raise ConfigError(f"{where}: {key}: {'.'.join(parts[:i])} is not a mapping or "
                              "a list")


def _copy(v: Any) -> Any:
    if isinstance(v, Mapping):
        return dict(v)
    if isinstance(v, list):
        return list(v)
    return v
