"""Fuzzing every loader of user configuration with Hypothesis.

Whatever a user writes (a workload, server or hardware profile, ``SimConfig``, a
calibration or price file, a marker's keywords, ``--set``), a loader either returns a
valid object or raises :class:`~pytest_ctxplat.errors.ConfigError` whose message starts
with where (``PATH:LINE: `` for a file, ``t.py::x: `` for a marker) and then names the
key: never another exception.

The strategies are shaped like real input: the real keys of each dataclass (read from
its type hints, nested ones included) with plausible values, wrong values of any type,
unknown keys, lists where mappings belong; then the YAML text is sometimes damaged
(a duplicated line, bytes that are not UTF-8, a stray character, a cut, a raw YAML value
such as ``2024-13-45`` or ``!!int x``).

CI runs a few examples per test; ``CTXPLAT_FUZZ_EXAMPLES=10000`` runs a long fuzz.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pytest_ctxplat.analysis.pricing import PriceFile, PriceTable, load_price_tables
from pytest_ctxplat.builtin import WORKLOADS, yaml_names
from pytest_ctxplat.catalog import AcceleratorSpec, ModelSpec, accelerator_names, model_names
from pytest_ctxplat.cli.common import parse_assignments
from pytest_ctxplat.config import key_paths
from pytest_ctxplat.errors import ConfigError
from pytest_ctxplat.servers.profiles import BUILTIN_LAUNCHERS, ServerProfile, load_profile
from pytest_ctxplat.sim.calibration import SCHEMA, Calibration, ModelPoints, load_calibration
from pytest_ctxplat.sim.config import SimConfig
from pytest_ctxplat.sim.hardware import (
    HardwareConfig,
    TierConfig,
    hardware_names,
    load_hardware,
)
from pytest_ctxplat.slo import SLOSpec, parse_slo
from pytest_ctxplat.workload.kinds import BUILTIN_KINDS
from pytest_ctxplat.workload.loader import load_workload

EXAMPLES = int(os.environ.get("CTXPLAT_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))
WHERE = "t.py::test_x"
BUILTIN_HW = "pytest_ctxplat/builtin/hardware.yaml"

# -- values -------------------------------------------------------------------------------
KEY = st.from_regex(r"[a-z][a-z0-9_]{0,9}", fullmatch=True)
SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(),
    st.sampled_from([0, -1, 2**63, -(2**63) - 1, 10**400, 1e300, -1e-300, 0.5]),
    st.text(max_size=12), st.dates(),
    st.sampled_from(["", "1e9", "1e400", "2024-13-45", "yes", "~", "inf", ".nan", "0x1F"]),
)
ANY = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3)
                   | st.dictionaries(KEY, inner, max_size=3), max_leaves=6)
# what a marker's keywords may hold beyond YAML values
PY_ANY = st.one_of(ANY, st.tuples(SCALAR, SCALAR), st.frozensets(st.integers(), max_size=2),
                   st.complex_numbers(), st.binary(max_size=4), st.builds(object))
# raw YAML values that only text can hold
RAW = ["2024-13-45", "2024-02-30 10:00:00", "!!int abc", "!!bool maybe", "!!float x",
       "!!timestamp x", "!!binary ###", "!!set [1]", "!!omap {a: 1}", "&a [*a]",
       "&b {k: *b}", "*nowhere", "!!python/object:os.system ls", "{a: 1, a: 2}", "[1, 2",
       "'open", "@x", "`x", "%x", "<<: 1", "9" * 5000, "[" * 300 + "]" * 300, "!!null x",
       "0o99", "1_000", "- a\n- b", "|\n  text", "? [a]\n: 1"]


def mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], odds: int = 8
           ) -> st.SearchStrategy[Any]:
    """``common`` ``odds`` times out of ``odds + 1`` (``st.one_of`` would merge equal
    branches, so repeating one does not weight it)."""
    return st.sampled_from([True] * odds + [False]).flatmap(lambda ok: common if ok else rare)


def _constraint(f: dataclasses.Field[Any]) -> Any:
    return f.metadata.get("ctxplat")


def _fields(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("internal")]


def _bounds(f: dataclasses.Field[Any] | None, lo: float, hi: float) -> tuple[float, float]:
    """The range a field's declared constraints allow (``gt`` counts as ``ge``)."""
    c = _constraint(f) if f is not None else None
    if c is None:
        return lo, hi
    low = next((b for b in (c.ge, c.gt) if b is not None), lo)
    high = next((b for b in (c.le, c.lt) if b is not None), hi)
    return low, max(low, min(high, low + hi))


def plausible(tp: Any, f: dataclasses.Field[Any] | None = None) -> st.SearchStrategy[Any]:
    """Values of type ``tp`` as a user would write them: mostly inside the field's
    declared range, sometimes on or just over its edge."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    c = _constraint(f) if f is not None else None
    if c is not None and c.choices:
        return st.sampled_from(c.choices)
    if tp is bool:
        return st.booleans()
    if tp is int:
        lo, hi = (int(b) for b in _bounds(f, 0, 100_000))
        lo += 1 if c is not None and c.gt is not None else 0
        edges = st.sampled_from([lo, hi, lo - 1, hi + 1])  # the last two are out of range
        return mostly(st.integers(lo, hi), edges, 10)
    if tp is float:
        lo, hi = _bounds(f, 0.0, 1e5)
        gt = c is not None and c.gt is not None
        edges = st.sampled_from([hi, lo if gt else lo - 0.5, hi * 2 + 1])  # out of range too
        return mostly(st.floats(lo, hi, exclude_min=gt), edges, 10)
    if tp in (str, Path):
        return st.text(max_size=10) | KEY
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([plausible(a, f) if a is not type(None) else st.none() for a in args])
    if origin in (tuple, list):
        return st.lists(plausible(args[0], f) if args else ANY, max_size=3)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        k, v = args if args else (str, Any)
        return st.dictionaries(plausible(k) if k is not Any else KEY,
                               plausible(v) if v is not Any else ANY, max_size=3)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return mapping_for(tp)
    return ANY


def mapping_for(cls: type[Any], wrong: st.SearchStrategy[Any] = ANY,
                **fixed: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """The required keys and some others of ``cls`` with plausible values (``fixed``
    replaces the strategy of a key), then sometimes a required key dropped, up to two
    keys given a ``wrong`` value, an unknown key: so most mappings get past the type
    checks to the constraints and the cross-field checks."""
    hints = typing.get_type_hints(cls)
    right = {f.name: fixed[f.name] if f.name in fixed else plausible(hints[f.name], f)
             for f in _fields(cls)}
    required = {f.name for f in _fields(cls) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}
    names = sorted(right)

    @st.composite
    def draw_mapping(draw: st.DrawFn) -> dict[str, Any]:
        out = draw(st.fixed_dictionaries({k: v for k, v in right.items() if k in required},
                                         optional={k: v for k, v in right.items()
                                                   if k not in required}))
        if required and draw(st.integers(0, 9)) == 9:
            del out[draw(st.sampled_from(sorted(required)))]
        for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2]))):
            out[draw(st.sampled_from(names))] = draw(wrong)
        if draw(st.integers(0, 5)) == 5:
            out[draw(KEY)] = draw(wrong)
        return out

    return draw_mapping()


def _field_names(*classes: type[Any]) -> set[str]:
    names: set[str] = set()
    todo = list(classes)
    while todo:
        cls = todo.pop()
        hints = typing.get_type_hints(cls)
        for f in _fields(cls):
            names.add(f.name)
            for a in (hints[f.name], *typing.get_args(hints[f.name])):
                for b in (a, *typing.get_args(a)):
                    if dataclasses.is_dataclass(b) and isinstance(b, type) and b not in classes:
                        todo.append(b)
    return names


# -- damaging the text ------------------------------------------------------------------
@st.composite
def damaged(draw: st.DrawFn, doc: Any, keys: list[str]) -> bytes:
    """``doc`` as YAML, sometimes damaged."""
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode()
    how = draw(st.sampled_from(["none"] * 8 + ["dup", "bytes", "char", "cut", "raw"]))
    at = draw(st.integers(0, len(text)))
    if how == "dup":
        lines = text.splitlines(keepends=True)
        i = draw(st.integers(0, len(lines) - 1))
        text = b"".join([*lines[:i + 1], lines[i], *lines[i + 1:]])
    elif how == "bytes":
        text = text[:at] + draw(st.sampled_from([b"\xff", b"\xc3(", b"\x80", b"\xed\xa0\x80"])
                                ) + text[at:]
    elif how == "char":
        char = draw(st.sampled_from([*":-[]{}&*!|>'\"#%@`,?\t\x01\x7f\n", "- ", ": "]))
        text = text[:at] + char.encode() + text[at:]
    elif how == "cut":
        text = text[:at]
    elif how == "raw":
        text += f"{draw(st.sampled_from(keys))}: {draw(st.sampled_from(RAW))}\n".encode()
    return text


# -- what an error must look like -------------------------------------------------------
def _doc_paths(text: bytes) -> set[str]:
    """Every key path of the document (as the loader would locate it), if it parses."""
    try:
        data = yaml.safe_load(text.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, ValueError, RecursionError, KeyError,
            AttributeError, TypeError, OverflowError):
        return set()
    out: set[str] = set()

    def walk(node: Any, prefix: str, depth: int) -> None:
        if depth > 20:
            return
        items = (node.items() if isinstance(node, Mapping)
                 else enumerate(node) if isinstance(node, list) else ())
        for k, v in items:
            k = "''" if isinstance(k, str) and not k else k
            path = f"{prefix}.{k}" if prefix else str(k)
            out.add(path)
            walk(v, path, depth + 1)

    walk(data, "", 0)
    return out


def _key_text(node: yaml.Node) -> str:
    """A mapping key as the loader names it in a key path (``None`` for ``~``)."""
    key = yaml.constructor.SafeConstructor().construct_object(node, deep=True)
    return "''" if isinstance(key, str) and not key else str(key)


def _line_of(text: bytes, key: str) -> int | None:
    """The line of ``key`` (or of its nearest parent found) in the YAML ``text``."""
    try:
        source = text.decode("utf-8")
        node = yaml.compose(source, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError):
        return None
    if node is None:
        return 1

    def line_at(mark: yaml.Mark) -> int:  # as editors count (not YAML: U+0085 breaks it)
        return len(re.findall(r"\r\n?|\n", source[:mark.index])) + 1

    line = line_at(node.start_mark)
    parts = key.split(".")
    while parts:  # a key may hold a dot (0.5 in cache_write): the longest match first
        if isinstance(node, yaml.MappingNode):
            found = [(n, k, v) for n in range(len(parts), 0, -1) for k, v in node.value
                     if _key_text(k) == ".".join(parts[:n])]
            if not found:
                break
            n, k, node = found[0]
            line, parts = line_at(k.start_mark), parts[n:]
        elif isinstance(node, yaml.SequenceNode) and parts[0].isdigit() \
                and int(parts[0]) < len(node.value):
            node = node.value[int(parts.pop(0))]
            line = line_at(node.start_mark)
        else:
            break
    return line


KEYLESS = ("invalid YAML: ", "not UTF-8 text: ", "a workload definition is a mapping",
           "a profile holds one mapping", "must be a mapping, got ", "cannot read: ")


def check_key(body: str, paths: set[str], names: set[str], message: str) -> None:
    """``body`` (the message after its location) names a key: a path in the data, a
    field below one, or a field of the classes read."""
    if body.startswith(KEYLESS):
        event(f"error: {body.partition(':')[0]}")
        return
    key, _, problem = body.partition(": ")
    # how deep the fuzzer got (pytest --hypothesis-show-statistics)
    event(f"error at depth {key.count('.')}: {' '.join(problem.split()[:2])}")
    parent, _, last = key.rpartition(".")
    number = re.fullmatch(r"[-+0-9.e]+|inf|nan|None|True|False", last) is not None
    assert (key in paths or key in names
            or ((parent in paths or parent in names or parent == "")
                and (last in names or number))), f"no key named: {message}"


def check_file_error(exc: ConfigError, path: Path, text: bytes, names: set[str],
                     others: tuple[str, ...] = ()) -> None:
    message = str(exc)
    assert "Traceback" not in message
    for prefix in (str(path), *others):
        m = re.match(re.escape(prefix) + r":(\d+): (.*)", message, re.S)
        if m:
            check_key(m[2], _doc_paths(text), names, message)
            if prefix == str(path):
                assert 1 <= int(m[1]) <= len(re.findall(rb"\r\n?|\n", text)) + 1, message
                if not m[2].startswith(KEYLESS):
                    line = _line_of(text, m[2].partition(": ")[0])
                    assert line in (None, int(m[1])), f"expected line {line}: {message}"
            return
    raise AssertionError(f"not located at {path}:LINE: {message}")


def check_source_error(exc: ConfigError, where: str, paths: set[str], names: set[str],
                       files: tuple[str, ...] = ()) -> None:
    message = str(exc)
    if message.startswith(where + ": "):
        check_key(message[len(where) + 2:], paths, names, message)
        return
    for prefix in files:  # a cross-field check may name a key of the file under it
        m = re.match(re.escape(prefix) + r":(\d+): (.*)", message, re.S)
        if m:
            check_key(m[2], paths, names, message)
            return
    raise AssertionError(f"not located at {where}: {message}")


def _paths(data: Mapping[str, Any]) -> set[str]:
    return _doc_paths(yaml.safe_dump(_plain(data)).encode()) | {str(k) for k in data}


def _plain(v: Any, depth: int = 0) -> Any:
    """``v`` made of plain YAML values (``--set 'x=&a [*a]'`` holds itself: cut)."""
    if depth > 8:
        return None
    if isinstance(v, Mapping):
        return {str(k): _plain(x, depth + 1) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x, depth + 1) for x in v]
    return v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def fuzz_file(folder: Path, name: str, text: bytes, load: Callable[[Path], Any],
              names: set[str], others: tuple[str, ...] = ()) -> Any:
    path = folder / name
    path.write_bytes(text)
    try:
        obj = load(path)
    except ConfigError as exc:
        check_file_error(exc, path, text, names, others)
        return None
    event("valid")
    return obj


# -- workload definitions and marker overrides --------------------------------------------
KIND_NAMES = _field_names(*BUILTIN_KINDS) | {"kind", "description"}
DEFINITIONS: dict[str, list[str]] = {}  # kind -> the built-in definitions of that kind
for _name in yaml_names(WORKLOADS):
    DEFINITIONS.setdefault(load_workload(_name).kind, []).append(_name)
TRACES = st.sampled_from(["kvcache", "agent-session-small.json", "mooncake-small.jsonl",
                          "fixtures/traces/kvcache"])


@st.composite
def workload_doc(draw: st.DrawFn) -> Any:
    cls = draw(st.sampled_from(BUILTIN_KINDS))
    body = draw(mapping_for(cls, path=TRACES | st.text(max_size=10)))
    kind = draw(mostly(st.just(cls.kind), st.sampled_from(["chatt", ""]) | ANY))
    doc = {"kind": kind, **body}
    if draw(st.booleans()):
        doc["description"] = draw(st.text(max_size=20))
    return draw(st.sampled_from([doc] * 7 + [None]) | ANY) if draw(st.integers(0, 7)) == 7 \
        else doc


@FUZZ
@given(data=st.data())
def test_workload_files(folder: Path, data: st.DataObject) -> None:
    text = data.draw(workload_doc().flatmap(lambda d: damaged(d, sorted(KIND_NAMES))))
    fuzz_file(folder, "workload.yaml", text, lambda p: load_workload(str(p)), KIND_NAMES)


@FUZZ
@given(data=st.data())
def test_workload_marker_overrides(data: st.DataObject) -> None:
    cls = data.draw(st.sampled_from(BUILTIN_KINDS))
    name = data.draw(st.sampled_from([cls.kind, *DEFINITIONS.get(cls.kind, [])]))
    overrides = data.draw(mapping_for(cls, PY_ANY))
    try:
        spec = load_workload(name, overrides, where=WHERE)
    except ConfigError as exc:
        check_source_error(exc, WHERE, _paths(overrides), KIND_NAMES,
                           (f"<built-in>/{name}.yaml",))
        return
    assert isinstance(spec, cls)
    event("valid")


@FUZZ
@given(data=st.data())
def test_cli_assignments_then_workload(data: st.DataObject) -> None:
    value = st.one_of(ANY.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
                      st.sampled_from(RAW), st.text(max_size=10))
    item = st.one_of(st.tuples(st.sampled_from(sorted(KIND_NAMES)) | KEY, value)
                     .map(lambda kv: f"{kv[0]}={kv[1]}"), st.text(max_size=10))
    items = data.draw(st.lists(item, max_size=4))
    try:
        values = parse_assignments(items, "--set")
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith("--set "), message
        bad = [i for i in items if "=" not in i or not i.partition("=")[0].strip()]
        assert bad or any(f"--set {i.partition('=')[0].strip()}: " in message
                          for i in items), message
        return
    assert set(values) == {i.partition("=")[0].strip() for i in items}
    try:
        load_workload("chat", values, where="--set")
    except ConfigError as exc:
        check_source_error(exc, "--set", _paths(values), KIND_NAMES)


# -- SLO markers --------------------------------------------------------------------------
SLO_NAMES = _field_names(SLOSpec)


@FUZZ
@given(kwargs=mapping_for(SLOSpec, PY_ANY))
def test_slo_markers(kwargs: dict[str, Any]) -> None:
    try:
        spec = parse_slo(kwargs, "t.py::x")
    except ConfigError as exc:
        check_source_error(exc, "t.py::x", _paths(kwargs), SLO_NAMES)
        return
    assert isinstance(spec, SLOSpec)


# -- server profiles, SimConfig -----------------------------------------------------------
PROFILE_NAMES = _field_names(ServerProfile, SimConfig)
PROFILE = mapping_for(
    ServerProfile, launcher=st.sampled_from(BUILTIN_LAUNCHERS), sim=mapping_for(SimConfig),
    model=st.sampled_from(["tiny", "tiny:llama-3.1-8b", "org/model"]),
    url=st.sampled_from(["http://127.0.0.1:8000", "ftp://x", ""]))


@FUZZ
@given(text=PROFILE.flatmap(lambda d: damaged(d, sorted(PROFILE_NAMES))))
def test_server_profiles(folder: Path, text: bytes) -> None:
    fuzz_file(folder, "profile.yaml", text, load_profile, PROFILE_NAMES)


SIM_NAMES = _field_names(SimConfig)


@FUZZ
@given(text=mapping_for(SimConfig).flatmap(lambda d: damaged(d, sorted(SIM_NAMES))))
def test_sim_config_files(folder: Path, text: bytes) -> None:
    fuzz_file(folder, "sim.yaml", text, SimConfig.from_yaml, SIM_NAMES)


# -- hardware profiles, calibration files -------------------------------------------------
HW_NAMES = _field_names(HardwareConfig, ModelSpec, AcceleratorSpec) | {"extends"}
CAL_NAMES = _field_names(Calibration)
CALIBRATION = mapping_for(Calibration, schema=st.just(SCHEMA),
                          models=st.dictionaries(st.sampled_from(model_names()),
                                                 plausible(ModelPoints), max_size=2))


@st.composite
def hardware_doc(draw: st.DrawFn, calibration: str) -> dict[str, Any]:
    hbm = draw(mapping_for(TierConfig, name=st.just("hbm")))
    more = st.lists(mapping_for(TierConfig, name=st.sampled_from(["dram", "nvme", "hbm"])),
                    max_size=3)
    tiers = draw(st.one_of(st.just([hbm]), more.map(lambda t: [hbm, *t])))
    doc = draw(mapping_for(
        HardwareConfig,
        model=st.sampled_from(model_names()) | mapping_for(ModelSpec),
        accelerator=st.sampled_from(accelerator_names()) | mapping_for(AcceleratorSpec),
        calibration=st.sampled_from([calibration, "missing.yaml"]),
        tiers=st.just(tiers)))
    if draw(st.integers(0, 3)) == 0:
        doc["extends"] = draw(mostly(st.sampled_from(hardware_names()), ANY, 4))
    return doc


@FUZZ
@given(data=st.data())
def test_hardware_profile_files(folder: Path, data: st.DataObject) -> None:
    cal = folder / "cal.yaml"
    cal.write_bytes(data.draw(CALIBRATION.flatmap(lambda d: damaged(d, sorted(CAL_NAMES)))))
    doc = data.draw(hardware_doc(str(cal)))
    text = data.draw(damaged(doc, sorted(HW_NAMES)))
    fuzz_file(folder, "hw.yaml", text, lambda p: load_hardware(str(p)), HW_NAMES | CAL_NAMES,
              (BUILTIN_HW,))


DOTTED = sorted({*key_paths(HardwareConfig), "tiers.0.capacity_gb", "tiers.0.utilization",
                 "tiers.1.read_gbs", "tiers.1.capacity_tokens", "tiers.0", "tiers.9.name",
                 "model.layers", "accelerator.hbm_gb", "tp.x", "a..b", ".tp", "tp."})


@FUZZ
@given(ref=st.sampled_from(hardware_names()),
       overrides=st.dictionaries(st.sampled_from(DOTTED) | KEY, PY_ANY | ANY, max_size=3))
def test_hardware_profile_overrides(ref: str, overrides: dict[str, Any]) -> None:
    try:
        load_hardware(ref, overrides)
    except ConfigError as exc:
        paths = {p for k in overrides for p in (k or "''", *_prefixes(k))} | _paths(overrides)
        check_source_error(exc, "profile override", paths, HW_NAMES, (BUILTIN_HW,))


def _prefixes(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@FUZZ
@given(text=CALIBRATION.flatmap(lambda d: damaged(d, sorted(CAL_NAMES))))
def test_calibration_files(folder: Path, text: bytes) -> None:
    fuzz_file(folder, "calibration.yaml", text, load_calibration, CAL_NAMES)


# -- price files ---------------------------------------------------------------------------
PRICE_NAMES = _field_names(PriceFile, PriceTable)
TABLE = mapping_for(PriceTable, cache_write=st.one_of(
    st.dictionaries(st.floats(-1, 1e5) | st.integers(-1, 10**5) | SCALAR,
                    st.floats() | SCALAR, max_size=3), ANY))
PRICES = mapping_for(PriceFile, tables=st.one_of(st.dictionaries(KEY, TABLE, max_size=2), ANY),
                     default=mostly(st.none(), KEY, 3))


@FUZZ
@given(text=PRICES.flatmap(lambda d: damaged(d, sorted(PRICE_NAMES))))
def test_price_files(folder: Path, text: bytes) -> None:
    fuzz_file(folder, "prices.yaml", text, load_price_tables, PRICE_NAMES)


# -- what the fuzzer found, pinned --------------------------------------------------------
CHAT = "kind: chat\nusers: 2\n"
HW = "model: llama-3.1-8b\naccelerator: h100\ntiers:\n  - {name: hbm}\n"
CAL = ("schema: ctxplat-calibration/1\nmatmul_tflops: 700\nhbm_copy_tbs: 3\nh2d_gbs: 50\n"
       "d2h_gbs: 50\n")


@pytest.mark.parametrize(("text", "expected"), [
    # a date that is none, explicit tags that do not fit: ValueError, KeyError, ...
    (CHAT + "description: 2024-13-45\n", r":3: invalid YAML: cannot read '2024-13-45' as "
                                         r"!!timestamp \(month must be in 1..12\)"),
    (CHAT + "turns: !!int abc\n", r":3: invalid YAML: cannot read 'abc' as !!int"),
    (CHAT + "recycle: !!bool maybe\n", r":3: invalid YAML: cannot read 'maybe' as !!bool"),
    (CHAT + "api: !!timestamp x\n", r":3: invalid YAML: cannot read 'x' as !!timestamp"),
    (CHAT + "api: !!set [1]\n", r":3: invalid YAML: expected a mapping node"),
    # numbers no float holds, and no 64-bit integer
    (CHAT + "think_time_s: " + "9" * 400 + "\n", r":3: think_time_s: must be a finite number"),
    (CHAT + "think_time_s: 1e400\n", r":3: think_time_s: must be a finite number, got inf"),
    (CHAT + "think_time_s: .inf\n", r":3: think_time_s: must be a finite number, got inf"),
    (CHAT + "turns: 9223372036854775808\n", r":3: turns: must be a 64-bit integer"),
    (CHAT + "turns: " + "9" * 5000 + "\n", r":3: invalid YAML: cannot read '999.*as !!int"),
    # a node that holds itself (RecursionError before)
    (CHAT + "designed_ttl_s: &a [*a]\n", r":3: invalid YAML: this node contains an alias "
                                         "to itself"),
    (CHAT + "load: &b {stages: [*b]}\n", r":3: invalid YAML: this node contains an alias"),
    (CHAT + "load: " + "[" * 3000 + "]" * 3000 + "\n", r":3: invalid YAML: nested too deeply"),
    # no line before: a control character, bytes that are not UTF-8, an empty file
    (CHAT + "api: \x01\n", r":3: invalid YAML: special characters are not allowed, got U\+0001"),
    (CHAT.encode() + b"api: \xff\n", r":3: not UTF-8 text: byte 0xff"),
    ("", r":1: a workload definition is a mapping with a 'kind' key"),
    # keys named as the loader reads them: null was located at the top, '' was no name
    (CHAT + "load:\n  ~: 1\n", r":4: load.None: unknown key"),
    (CHAT + "? \n: 1\n", r":3: None: unknown key"),
    (CHAT + '"": 1\n', r":3: '': unknown key"),
    (CHAT + "load:\n  false: 1\n  'False': 2\n", r":4: load.False: unknown key"),
    # lines as editors count them: YAML also breaks lines at U+0085 (past the end before)
    ("kind: chat\ndescription: '\x85 \u2028'\nusers: 0\n", r":3: users: must be > 0"),
    ("kind: chat\r\nusers: 1\rusers: 2\r\n", r":3: invalid YAML: duplicate key 'users' "
                                             r"\(first at line 2\)"),
])
def test_workload_file_errors_found_by_fuzzing(tmp_path: Path, text: str | bytes,
                                               expected: str) -> None:
    path = tmp_path / "w.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match="^" + re.escape(str(path)) + expected):
        load_workload(str(path))


@pytest.mark.parametrize(("text", "expected"), [
    # capacities too large to count (OverflowError before)
    (HW + "  - {name: dram, capacity_gb: 1.0e300, read_gbs: 1, write_gbs: 1}\n",
     r":5: tiers.1.capacity_gb: gives a KV capacity of inf tokens"),
    (HW.replace("h100", "{hbm_gb: 1.0e300, hbm_tbs: 1, bf16_tflops: 1}"),
     r":4: tiers.0: gives a KV capacity of inf tokens"),
    # a calibration file, and one naming a missing or unknown profile: where it is named
    (HW + "calibration: missing.yaml\n", r":5: calibration: file not found: missing.yaml"),
    (HW + "calibration: CAL\n", r":5: calibration: .*cal.yaml:3: hbm_copy_tbs: must be > 0"),
    (HW + "calibration: TINY\n", r":5: calibration: .*tiny.yaml gives h100 "
                                 r"bandwidth_efficiency must be > 0, got 0.0"),
    (HW + "extends: h900\n", r":5: extends: unknown simulator profile 'h900'"),
    (HW + "extends: base.yaml\n", r":5: extends: file not found: base.yaml"),
    (HW + 'calibration: "a\\0b.yaml"\n', r":5: calibration: a.*b.yaml: cannot read: .*null"),
])
def test_hardware_file_errors_found_by_fuzzing(tmp_path: Path, text: str, expected: str
                                               ) -> None:
    (tmp_path / "cal.yaml").write_text(CAL.replace("hbm_copy_tbs: 3", "hbm_copy_tbs: -3"))
    (tmp_path / "tiny.yaml").write_text(CAL.replace("hbm_copy_tbs: 3", "hbm_copy_tbs: 5e-324"))
    path = tmp_path / "hw.yaml"
    path.write_text(text.replace("CAL", str(tmp_path / "cal.yaml"))
                    .replace("TINY", str(tmp_path / "tiny.yaml")))
    with pytest.raises(ConfigError, match="^" + re.escape(str(path)) + expected):
        load_hardware(str(path))


def test_override_and_marker_errors_found_by_fuzzing() -> None:
    # an empty part of a dotted key was an "unknown key" located in the built-in file
    for key in ("", "a..b", ".tp", "tp."):
        with pytest.raises(ConfigError, match=r"^profile override: .*not a dotted key"):
            load_hardware("h100-llama8b", {key: 2})
    with pytest.raises(ConfigError, match=r"^profile override: tp: must be a 64-bit integer"):
        load_hardware("h100-llama8b", {"tp": 10**400})  # OverflowError before
    # marker values no float holds (OverflowError; a ValueError printing them)
    with pytest.raises(ConfigError, match=r"^t.py::x: ttft_p95_ms: must be a finite number, "
                                          r"got an integer of about 5000 digits"):
        parse_slo({"ttft_p95_ms": 10**5000}, "t.py::x")
    with pytest.raises(ConfigError, match=r"^t.py::x: ttft_p95_ms: must be a finite number"):
        parse_slo({"ttft_p95_ms": float("inf")}, "t.py::x")
    # --set values PyYAML reads with a ValueError or a KeyError
    for value in ("2024-13-45", "!!int x", "!!bool maybe", "!!timestamp x"):
        with pytest.raises(ConfigError, match=r"^--set api: cannot read the value"):
            parse_assignments([f"api={value}"], "--set")


def test_price_file_names_a_ttl_as_written(tmp_path: Path) -> None:
    # the key was printed with 6 digits: cache_write.10000.8 for 10000.75
    path = tmp_path / "prices.yaml"
    path.write_text("tables:\n  a:\n    input: 1\n    output: 1\n    cache_read: 1\n"
                    "    cache_write:\n      300: 1\n      10000.75: -1.0\n")
    with pytest.raises(ConfigError, match="^" + re.escape(f"{path}:8: tables.a.cache_write."
                                                          "10000.75: must be a price >= 0")):
        load_price_tables(path)
