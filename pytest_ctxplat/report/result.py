"""Run results: frozen dataclasses with ``to_dict()``, written as one JSON file per run.

The JSON carries ``schema_version``, the plugin version, machine, server description,
seed and time next to the figures, so a result file is understandable on its own.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError
from ..slo import SLOSpec, Verdict
from ..version import __version__
from .records import RequestRecord

__all__ = ["SCHEMA_VERSION", "RunResult", "machine_info", "read_document", "result_path",
           "write_document", "write_json"]

SCHEMA_VERSION = 1


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }


@dataclasses.dataclass(frozen=True, kw_only=True)
class HitRates:
    """The three hit rates side by side (fractions of prompt tokens)."""

    designed: float | None
    request: float | None
    server: float | None
    notes: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"designed": self.designed, "request": self.request, "server": self.server,
                "notes": dict(self.notes)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerMetrics:
    """Server-side figures of one run from ``/metrics`` deltas (None: not available)."""

    prefix_hit_rate: float | None = None
    external_hit_rate: float | None = None
    figures: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"prefix_hit_rate": self.prefix_hit_rate,
                "external_hit_rate": self.external_hit_rate, **dict(self.figures)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunResult:
    """Everything measured in one run of a workload against one server."""

    name: str
    target: Mapping[str, Any]
    workload: Mapping[str, Any]
    seed: int
    started_at: str
    wall_s: float
    metrics: Mapping[str, Any]
    hit_rates: HitRates
    server: ServerMetrics | None
    observed: Mapping[str, float | None]
    slo: SLOSpec | None = None
    verdict: Verdict | None = None
    records: tuple[RequestRecord, ...] = ()
    timeline: tuple[Mapping[str, float], ...] = ()
    interrupted: bool = False
    incomplete: str | None = None
    errors_sample: tuple[str, ...] = ()
    comparison: Mapping[str, Any] | None = None  # against a baseline (regression.Comparison)
    window: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    capacity: Mapping[str, Any] | None = None  # the SLO-governed controller's report
    sweep: tuple[Mapping[str, Any], ...] | None = None  # a sweep's points
    knees: Mapping[str, Any] | None = None  # where each tier runs out (orchestrator.knees)
    sessions: Mapping[str, Any] | None = None  # session-level figures (report.sessions)
    tiers: Mapping[str, Any] | None = None  # hits per KV tier (servers.tiers.TierHits)
    parts: Mapping[str, Any] | None = None  # a split run: a part's, or the merged shards'
    timing: Mapping[str, Any] | None = None  # client vs server model time (report.timing)

    @property
    def passed(self) -> bool:
        return self.verdict is None or self.verdict.passed

    def to_dict(self, *, records: bool = True) -> dict[str, Any]:

        return {
            "schema_version": SCHEMA_VERSION,
            "plugin_version": __version__,
            "name": self.name,
            "started_at": self.started_at,
            "wall_s": self.wall_s,
            "machine": machine_info(),
            "seed": self.seed,
            "target": dict(self.target),
            "workload": dict(self.workload),
            "slo": self.slo.to_dict() if self.slo else None,
            "verdict": self.verdict.to_dict() if self.verdict else None,
            "interrupted": self.interrupted,
            "incomplete": self.incomplete,
            "metrics": dict(self.metrics),
            "hit_rates": self.hit_rates.to_dict(),
            "server": self.server.to_dict() if self.server else None,
            "observed": dict(self.observed),
            "window": dict(self.window),
            "errors_sample": list(self.errors_sample),
            "capacity": dict(self.capacity) if self.capacity is not None else None,
            "sweep": [dict(p) for p in self.sweep] if self.sweep is not None else None,
            "knees": dict(self.knees) if self.knees is not None else None,
            "sessions": dict(self.sessions) if self.sessions is not None else None,
            "tiers": dict(self.tiers) if self.tiers is not None else None,
            "timing": dict(self.timing) if self.timing is not None else None,
            "timeline": [dict(t) for t in self.timeline],
            "records": [r.to_dict() for r in self.records] if records else None,
            "comparison": dict(self.comparison) if self.comparison is not None else None,
            "parts": dict(self.parts) if self.parts is not None else None,
        }


def result_path(results_dir: Path, name: str) -> Path:
    """A file name for ``name`` (a test node id, say) that is safe on every filesystem."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:180] or "run"
    return results_dir / f"{safe}.json"


def write_json(result: RunResult, results_dir: Path) -> Path:
    """Write ``result`` atomically; returns the path."""
    return write_document(result.to_dict(), results_dir)


def write_document(doc: Mapping[str, Any], results_dir: Path) -> Path:
    """Write a result document (:meth:`RunResult.to_dict`, or one received from a worker
    process) atomically, named after its ``name``; returns the path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = result_path(results_dir, str(doc["name"]))
    tmp = path.with_suffix(".json.tmp")
    tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2
                                 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS))
    tmp.replace(path)
    return path


def read_document(path: Path, key: str, what: str) -> dict[str, Any]:
    """A JSON document written by this package (a result, a baseline entry, an analysis),
    read from ``path``; it must be an object with ``key``. Errors name the file and
    ``what`` was expected."""
    try:
        doc = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or key not in doc:
        raise ConfigError(f"{path}: not {what} (no {key!r})")
    return doc
