"""Baselines: named sets of results with provenance, kept as plain JSON in a directory.

A baseline ``NAME`` is the folder ``DIR/NAME/`` holding one JSON file per test (its
observed figures, the per-request samples the significance test needs, and the
provenance) plus ``index.json`` (test id -> file, and the provenance of the save). The
files are written atomically, are small, and are meant to be committed.

Provenance (:func:`provenance`): server profile and launch settings, engine name and
version, model, KV block size, hardware, plugin version, a stable hash of the workload
definition, seed and git commit. A baseline entry is *compatible* with a run only when
the workload hash, model and block size agree (:func:`check_compatible`); other
differences (engine version, hardware, server settings) are warnings.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError
from ..version import __version__
from .regression import Comparison, compare, samples_from_records
from .result import RunResult, result_path

__all__ = ["BASELINE_SCHEMA", "BaselineError", "available", "check_compatible", "check_name",
           "compare_to_baseline", "entry_from_result", "git_commit", "hardware", "load_entry",
           "load_index", "provenance", "save_entry", "workload_hash"]

BASELINE_SCHEMA = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class BaselineError(ConfigError):
    """A baseline that cannot be used: unknown name, unreadable or incompatible file.
    The message names the baseline, the test and what differs."""


def _json(obj: Any) -> Any:
    """``obj`` as plain JSON data (tuples to lists, numpy numbers to floats)."""
    return orjson.loads(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY
                                     | orjson.OPT_NON_STR_KEYS))


def workload_hash(workload: Mapping[str, Any]) -> str:
    """A stable hash (16 hex digits) of a workload definition (canonical JSON)."""
    canon = orjson.dumps(_json(dict(workload)), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canon).hexdigest()[:16]


def git_commit(rootdir: Path | None) -> str | None:
    """``git rev-parse HEAD`` in ``rootdir`` (no shell, 5 s at most); None outside a
    repository or without git."""
    if rootdir is None:
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=rootdir, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{7,64}", commit) else None


def hardware(target: Mapping[str, Any]) -> str:
    """What the run ran on: the simulated accelerator, the GPU the server reports, else
    this machine's CPU model."""
    settings = target.get("settings") or {}
    for key in ("gpu", "accelerator"):
        if isinstance(settings.get(key), str):
            tp = settings.get("tp")
            return f"{tp} x {settings[key]}" if tp and tp != 1 else str(settings[key])
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu or platform.processor() or platform.machine()}"


def _engine(target: Mapping[str, Any], engine: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if engine:
        return dict(engine)
    if str(target.get("launcher", "")).startswith("sim"):
        return {"name": "ctxplat-sim", "version": __version__}
    return None


def _block_size(target: Mapping[str, Any]) -> int | None:
    found = target.get("server_block_size") or (target.get("settings") or {}).get("block_size")
    return int(found) if isinstance(found, (int, float)) else None


def provenance(result: RunResult | Mapping[str, Any], *, engine: Mapping[str, Any] | None = None,
               rootdir: Path | None = None) -> dict[str, Any]:
    """Where a result came from (see the module doc). ``engine`` is what the server's
    ``/version`` said (the simulator's is known); ``rootdir`` is where to ask git."""
    d = result.to_dict(records=False) if isinstance(result, RunResult) else result
    target = d.get("target") or {}
    workload = d.get("workload") or {}
    return {
        "profile": target.get("profile"),
        "launcher": target.get("launcher"),
        "settings": _json(target.get("settings") or {}),
        "engine": _engine(target, engine),
        "model": target.get("model"),
        "block_size": _block_size(target),
        "hardware": hardware(target),
        "plugin_version": d.get("plugin_version", __version__),
        "workload_hash": workload_hash(workload),
        "workload_kind": workload.get("kind"),
        "seed": d.get("seed"),
        "git_commit": git_commit(rootdir),
    }


def entry_from_result(result: RunResult | Mapping[str, Any], *,
                      engine: Mapping[str, Any] | None = None,
                      rootdir: Path | None = None) -> dict[str, Any]:
    """A baseline entry of one run: provenance, observed figures, run metrics and
    per-request samples (a :class:`RunResult` or its JSON mapping)."""
    d = result.to_dict() if isinstance(result, RunResult) else result
    if isinstance(d.get("samples"), Mapping) and "provenance" in d:
        return dict(d)  # already an entry
    metrics = d.get("metrics") or {}
    return {
        "schema_version": BASELINE_SCHEMA,
        "test": d.get("name"),
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "provenance": provenance(d, engine=engine, rootdir=rootdir),
        "observed": _json(dict(d.get("observed") or {})),
        "metrics": {k: metrics.get(k) for k in ("requests", "ok", "errors", "error_rate",
                                                "output_tokens_per_s", "requests_per_s")},
        "samples": samples_from_records(d.get("records") or ()),
    }


def check_name(name: str) -> str:
    """``name`` if it can name a baseline folder, else a :class:`BaselineError`."""
    if not _NAME.match(name):
        raise BaselineError(f"baseline name {name!r}: use letters, digits, '.', '_' and "
                            "'-' (starting with a letter or digit)")
    return name


def _folder(directory: Path, name: str) -> Path:
    return Path(directory) / check_name(name)


def _write(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
                                 | orjson.OPT_SERIALIZE_NUMPY))
    tmp.replace(path)


def save_entry(directory: Path, name: str, entry: Mapping[str, Any]) -> Path:
    """Write ``entry`` (see :func:`entry_from_result`) into baseline ``name`` under
    ``directory`` and record it in the baseline's ``index.json``; both atomically.
    Returns the entry's path."""
    folder = _folder(directory, name)
    folder.mkdir(parents=True, exist_ok=True)
    test = str(entry.get("test") or "run")
    path = result_path(folder, test)
    _write(path, dict(entry))
    index: dict[str, Any] = load_index(directory, name) if (folder / "index.json").exists() \
        else {"schema_version": BASELINE_SCHEMA, "baseline": name, "tests": {}}
    tests: dict[str, str] = index["tests"]
    tests[test] = path.name
    index["provenance"] = entry.get("provenance")
    index["saved_at"] = entry.get("saved_at")
    _write(folder / "index.json", index)
    return path


def available(directory: Path) -> list[str]:
    """The baselines saved under ``directory`` (folders with an ``index.json``)."""
    d = Path(directory)
    return sorted(p.name for p in d.iterdir() if (p / "index.json").is_file()) \
        if d.is_dir() else []


def _read(path: Path, what: str) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except OSError as exc:
        raise BaselineError(f"{what}: cannot read {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise BaselineError(f"{what}: {path} is not valid JSON: {exc}") from None


def load_index(directory: Path, name: str) -> dict[str, Any]:
    """The index of baseline ``name``; an unknown name is a :class:`BaselineError`
    naming it and the baselines there are."""
    folder = _folder(directory, name)
    if not (folder / "index.json").is_file():
        names = available(directory)
        raise BaselineError(f"unknown baseline {name!r} in {directory}; available: "
                            + (", ".join(names) if names else "none (save one with "
                               "--ctxplat-save NAME)"))
    index = _read(folder / "index.json", f"baseline {name!r}")
    if not isinstance(index, dict) or not isinstance(index.get("tests"), dict):
        raise BaselineError(f"baseline {name!r}: {folder / 'index.json'} is not a "
                            "baseline index")
    return index


def load_entry(directory: Path, name: str, test: str) -> dict[str, Any] | None:
    """Test ``test``'s entry in baseline ``name``; None when the baseline lacks it."""
    index = load_index(directory, name)
    file = index["tests"].get(test)
    if file is None:  # saved by a parallel worker whose index update lost the race?
        path = result_path(_folder(directory, name), test)
        if not path.is_file():
            return None
        file = path.name
    entry = _read(_folder(directory, name) / str(file), f"baseline {name!r} for {test}")
    if not isinstance(entry, dict) or "observed" not in entry:
        raise BaselineError(f"baseline {name!r} for {test}: {file} is not a baseline entry")
    return entry if entry.get("test") in (None, test) else None


_REFUSED = (("workload_hash", "workload"), ("model", "model"), ("block_size", "block_size"))
_WARNED = (("engine", "engine"), ("hardware", "hardware"), ("settings", "server settings"),
           ("profile", "server profile"))


def check_compatible(baseline: Mapping[str, Any], now: Mapping[str, Any], name: str,
                     test: str) -> list[str]:
    """Compare two provenances: raise :class:`BaselineError` when the workload, model or
    block size differ (naming each difference), else return warnings for the engine,
    hardware, server settings and profile that differ."""
    differs = []
    for key, label in _REFUSED:
        a, b = baseline.get(key), now.get(key)
        if a != b:
            what = "hash " if key == "workload_hash" else ""
            differs.append(f"{label} differs ({what}{a} vs {b})")
    if differs:
        raise BaselineError(f"baseline {name!r} for {test}: " + ", ".join(differs)
                            + "; save a new baseline for this workload and server")
    return [f"{label}: {_difference(baseline.get(key), now.get(key))}"
            for key, label in _WARNED if baseline.get(key) != now.get(key)]


def _difference(a: Any, b: Any) -> str:
    """``baseline X, now Y``; for two mappings, only the keys that differ."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        return ", ".join(f"{k} {_short(a.get(k))} -> {_short(b.get(k))}" for k in keys)
    return f"baseline {_short(a)}, now {_short(b)}"


def _short(value: Any) -> str:
    if value is None:
        return "unset"
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= 80 else text[:77] + "..."


def compare_to_baseline(result: RunResult | Mapping[str, Any], directory: Path, name: str, *,
                        tolerances: Mapping[str, Any] | None = None,
                        engine: Mapping[str, Any] | None = None,
                        rootdir: Path | None = None, test: str | None = None
                        ) -> Comparison | None:
    """Judge ``result`` against its entry (``test``, default the result's name) in
    baseline ``name`` under ``directory``: None when the baseline has no such entry; an
    incompatible entry is a :class:`BaselineError` naming what differs."""
    now = entry_from_result(result, engine=engine, rootdir=rootdir)
    test = test or str(now.get("test"))
    entry = load_entry(directory, name, test)
    if entry is None:
        return None
    warnings = check_compatible(entry.get("provenance") or {}, now["provenance"], name, test)
    return compare(now, entry, tolerances=tolerances, name=name, test=test, warnings=warnings)
