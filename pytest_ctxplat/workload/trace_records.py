"""What the trace readers share: the error, the odd-record kinds and their counts, the
per-file rows, and the checks of single values.

An *odd record* is one a reader can only read with an assumption, or must drop. It is
counted by kind (:data:`ODD_RECORD_KINDS` says what each kind assumes), never a reason to
refuse a whole folder. In strict mode the kinds marked ``strict`` raise
:class:`TraceFormatError` instead, naming the file and the record; the other kinds are
shapes the formats allow (an async-launched subagent, an empty session) and are only
counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError

__all__ = ["ODD_RECORD_KINDS", "OddKind", "OddRecords", "TraceFormatError"]

I64 = npt.NDArray[np.int64]
INT64_MIN = -(2**63)
INT64_END = 2**63


class TraceFormatError(ConfigError):
    """A trace file that cannot be read; the message names the file and line or entry."""


@dataclass(frozen=True)
class OddKind:
    """What the reader assumes for one kind of odd record; ``strict``: strict mode
    refuses it (False: a shape the format allows, only counted)."""

    assumed: str
    strict: bool = True


ODD_RECORD_KINDS: dict[str, OddKind] = {
    "file.unreadable": OddKind(
        "not valid JSON, or not a session object with a 'requests' list: file skipped"),
    "file.block_size": OddKind("block_size not a positive integer: assumed 64"),
    "file.block_size_differs": OddKind(
        "block_size differs from the folder's other files: file skipped"),
    "file.hash_id_scope": OddKind(
        "hash_id_scope not 'local' or 'global': assumed local (ids unique within the file)"),
    "session.empty": OddKind("a file (session) with no requests: contributes nothing",
                             strict=False),
    "record.not_object": OddKind(
        "a record that is not a JSON object (or a JSONL line that is not JSON): skipped"),
    "record.unknown_key": OddKind("keys this reader does not know: ignored"),
    "record.time_missing": OddKind(
        "t / timestamp missing, null or not a finite number: the previous request's "
        "time assumed (the start of its list for the first)"),
    "record.out_of_order": OddKind(
        "time earlier than the previous request's (or negative): kept at its own time, "
        "rows are sorted by time", strict=False),
    "request.unknown_type": OddKind("type not n, s or subagent: read as a request"),
    "request.in_invalid": OddKind(
        "in / input_length missing, null or not an integer >= 0: assumed to be what its "
        "hash_ids cover (ids x block size)"),
    "request.in_below_hash_ids": OddKind(
        "in / input_length below what its hash_ids cover: raised to ids x block size"),
    "request.tokens_beyond_hash_ids": OddKind(
        "more tokens than its hash_ids cover (a whole block or more past the last id): "
        "those tokens carry no id (never shared)"),
    "request.out_invalid": OddKind(
        "out / output_length null or not an integer >= 0: assumed 0"),
    "request.hash_ids_invalid": OddKind(
        "hash_ids missing, null, not a list or holding a non-integer: the integers before "
        "the first bad element kept (none if not a list)"),
    "request.timing_invalid": OddKind(
        "api_time / think_time not a number: taken as unknown"),
    "request.empty": OddKind(
        "a request with no input tokens: kept (it reads no blocks; a replay sends one "
        "token)", strict=False),
    "subagent.async_launched": OddKind(
        "async-launched subagent: its requests start at the marker's t and its parent "
        "does not wait for it", strict=False),
    "subagent.nested": OddKind(
        "subagent inside a subagent: timed from the enclosing subagent's start, like its "
        "requests", strict=False),
    "subagent.unknown_status": OddKind(
        "status not completed or async_launched: taken as blocking (its marker written "
        "when it finished)"),
    "subagent.duration_missing": OddKind(
        "duration_ms missing, null or not a number >= 0 on a blocking subagent: duration "
        "taken as its last request's t plus api_time"),
    "subagent.no_requests": OddKind("requests missing or not a list: subagent skipped"),
    "subagent.empty": OddKind("a subagent with an empty requests list: nothing to read",
                              strict=False),
    "subagent.too_deep": OddKind("subagents nested more than 32 levels deep: skipped"),
}


class OddRecords:
    """Counts of odd records by kind, and where each kind was first seen. In strict mode
    :meth:`note` raises for the kinds marked ``strict``."""

    def __init__(self, *, strict: bool = False) -> None:
        self.strict = strict
        self.counts: dict[str, int] = {}
        self.first: dict[str, str] = {}

    def note(self, kind: str, where: str, problem: str) -> None:
        """Count one odd record of ``kind`` at ``where`` (``FILE: RECORD``)."""
        odd = ODD_RECORD_KINDS[kind]
        if self.strict and odd.strict:
            raise TraceFormatError(f"{where}: {problem} (strict reading refuses this; "
                                   f"without strict: {odd.assumed})")
        n = self.counts.get(kind, 0)
        self.counts[kind] = n + 1
        if not n:
            self.first[kind] = f"{where}: {problem}"

    def merge(self, other: OddRecords) -> None:
        for kind, n in other.counts.items():
            if kind not in self.counts:
                self.first[kind] = other.first[kind]
            self.counts[kind] = self.counts.get(kind, 0) + n

    def summary(self) -> str:
        """One line: each kind with its count, then the first odd record."""
        if not self.counts:
            return "no odd records"
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(self.counts.items()))
        first = next(iter(self.first.values()))  # the kind seen first
        return f"odd records: {kinds}; first: {first}"


# --------------------------------------------------------------------------- rows


@dataclass
class Part:
    """Requests of one file before sorting, with file-local dense ids."""

    source: str
    fmt: str
    block_size: int
    notes: OddRecords = field(default_factory=OddRecords)
    arrival: list[float] = field(default_factory=list)
    inp: list[int] = field(default_factory=list)
    out: list[int] = field(default_factory=list)
    ids: list[I64] = field(default_factory=list)
    partial: list[bool] = field(default_factory=list)
    agent: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)  # index within this part, -1 if none
    think: list[float] = field(default_factory=list)
    api: list[float] = field(default_factory=list)
    async_agents: set[int] = field(default_factory=set)
    session_name: str = ""
    flat: npt.NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, np.int32))
    counts: I64 = field(default_factory=lambda: np.zeros(0, np.int64))
    nblocks: int = 0

    def __len__(self) -> int:
        return len(self.arrival)

    def seal(self) -> Part:
        """Turn the per-request id arrays into one dense int32 array (memory-lean)."""
        self.counts = np.fromiter((len(x) for x in self.ids), np.int64, len(self.ids))
        flat = np.concatenate(self.ids) if self.ids else np.zeros(0, np.int64)
        self.ids = []
        dense, self.nblocks = densify(flat)
        self.flat = dense.astype(np.int32)
        return self


def densify(ids: I64) -> tuple[I64, int]:
    """Map ids to 0..k-1 (order of value); return the mapped ids and k."""
    if not len(ids):
        return ids, 0
    lo, hi = int(ids.min()), int(ids.max())
    if hi - lo <= 8 * len(ids) + 4096:
        seen = np.zeros(hi - lo + 1, np.bool_)
        seen[ids - lo] = True
        remap = np.cumsum(seen, dtype=np.int64) - 1
        return remap[ids - lo], int(remap[-1]) + 1
    uniq, inv = np.unique(ids, return_inverse=True)
    return inv.astype(np.int64, copy=False), len(uniq)


# --------------------------------------------------------------------------- values
# Each check returns the value, or None when it is not valid (the caller notes it).


MAX_TIME = 1e15  # seconds or milliseconds: beyond any trace, and sums stay finite
MAX_COUNT = 2**53  # tokens or milliseconds in one record


def time_value(v: Any) -> float | None:
    """A finite number (not a bool) of magnitude below :data:`MAX_TIME`."""
    if type(v) is float:
        return v if -MAX_TIME < v < MAX_TIME else None
    if type(v) is int:
        return float(v) if -MAX_TIME < v < MAX_TIME else None
    return None


def count_value(v: Any) -> int | None:
    """An integer in ``0 .. MAX_COUNT`` (an integral float such as ``12.0`` counts)."""
    if type(v) is int:
        return v if 0 <= v <= MAX_COUNT else None
    if type(v) is float and 0 <= v <= MAX_COUNT and v == int(v):
        return int(v)
    return None


def optional_time(v: Any) -> float | None:
    """Seconds, NaN when absent or null; None when present but not a number."""
    if v is None:
        return math.nan
    return time_value(v)


_NO_IDS = np.zeros(0, np.int64)


def ids_value(v: Any) -> tuple[I64, bool]:
    """Block ids of a ``hash_ids`` value, and whether it was valid: a list of integers.
    An invalid list keeps the integers before its first bad element."""
    if type(v) is not list:
        return _NO_IDS, False
    if not v:
        return _NO_IDS, True
    try:
        arr = np.array(v)
    except (TypeError, ValueError, OverflowError):
        arr = None
    if arr is not None and arr.ndim == 1 and arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False), True
    k = 0
    for x in v:
        if type(x) is not int or not INT64_MIN <= x < INT64_END:
            break
        k += 1
    return np.array(v[:k], np.int64), False


def bad_element(v: Any) -> str:
    """The first element of a bad ``hash_ids`` value, for messages."""
    if type(v) is not list:
        return f"{v!r:.60}"
    for x in v:
        if type(x) is not int or not INT64_MIN <= x < INT64_END:
            return f"{x!r:.60}"
    return f"{v!r:.60}"
