"""Readers for public request traces: kv-cache-tester sessions and Mooncake JSONL.

Both formats describe requests by the ids of their input blocks (prefix-chained: equal
ids mean equal content *and* equal prefix). :func:`read_trace` turns one file or folder
into a columnar :class:`Trace`; :func:`read_traces` concatenates several. The formats
themselves are read in :mod:`.trace_kvcache` and :mod:`.trace_mooncake`.

Conventions (see ``docs/reference/analysis.md``):

* Rows are requests in arrival order; ties keep file order (the order in which the
  requests appear in the files, a subagent's requests at the place of its entry).
* Block ids are made dense (``0 .. num_blocks-1``) and globally unique: kv-cache-tester
  ids with ``hash_id_scope: local`` are per file, Mooncake ids are per file too (one id
  space for the whole file).
* kv-cache-tester: every session file starts at time 0, so several files replay as
  concurrent users starting together. A subagent entry's own ``t`` is when it
  *completed*; its requests start at ``t - duration_ms/1000`` plus their own ``t``. An
  async-launched subagent's ``t`` is its launch: its requests start at ``t`` plus their
  own ``t``, and its parent did not wait for it.
* Mooncake: ``timestamp`` is in milliseconds; the last block of a request may cover fewer
  than ``block_size`` tokens (``last_block_partial``).
* A record that can only be read with an assumption, or must be dropped, is counted by
  kind in ``Trace.odd_records`` (:data:`ODD_RECORD_KINDS` says what each assumes); with
  ``strict=True`` it raises :class:`TraceFormatError` naming the file and the record.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from .trace_kvcache import read_kvcache
from .trace_mooncake import MOONCAKE_BLOCK_SIZE, read_mooncake
from .trace_records import ODD_RECORD_KINDS, OddRecords, Part, TraceFormatError

__all__ = ["FORMATS", "MOONCAKE_BLOCK_SIZE", "ODD_RECORD_KINDS", "Trace", "TraceFormatError",
           "build_trace", "read_trace", "read_traces"]

FORMATS = ("kv-cache-tester", "mooncake")

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class Trace:
    """Requests of one or more traces, columnar, one row per request in arrival order.

    Request ``i`` reads blocks ``block_ids[block_offsets[i]:block_offsets[i + 1]]``.
    ``async_agent[i]``: request ``i`` belongs to an async-launched subagent (its parent
    did not wait for it). ``odd_records`` counts the odd records read by kind (see
    :data:`ODD_RECORD_KINDS`), ``odd_first`` says where each kind was first seen.
    """

    name: str
    block_size: int
    arrival_s: F64
    input_tokens: I64
    output_tokens: I64
    block_offsets: I64
    block_ids: I64
    last_block_partial: npt.NDArray[np.bool_]
    session: npt.NDArray[np.int32]
    session_names: list[str]
    agent: npt.NDArray[np.int32]
    parent_request: I64
    think_time_s: F64
    api_time_s: F64
    async_agent: npt.NDArray[np.bool_]
    formats: tuple[str, ...] = field(default=())
    odd_records: dict[str, int] = field(default_factory=dict)
    odd_first: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def requests(self) -> int:
        return len(self.arrival_s)

    @functools.cached_property
    def num_blocks(self) -> int:
        """Distinct blocks (ids are dense, so this is ``max id + 1``)."""
        return int(self.block_ids.max()) + 1 if len(self.block_ids) else 0

    @functools.cached_property
    def blocks_per_request(self) -> I64:
        return np.diff(self.block_offsets)

    def odd_report(self) -> dict[str, dict[str, Any]]:
        """Per kind of odd record: its ``count``, what was ``assumed``, whether ``strict``
        reading refuses it, and the ``first`` one seen (file, record, problem)."""
        return {k: {"count": n, "assumed": ODD_RECORD_KINDS[k].assumed,
                    "strict": ODD_RECORD_KINDS[k].strict, "first": self.odd_first.get(k, "")}
                for k, n in sorted(self.odd_records.items())}

    def blocks(self, i: int) -> I64:
        """Block ids of request ``i``."""
        return self.block_ids[self.block_offsets[i] : self.block_offsets[i + 1]]

    def block_tokens(self, i: int) -> I64:
        """Tokens covered by each block of request ``i`` (the last may be partial)."""
        n = int(self.block_offsets[i + 1] - self.block_offsets[i])
        out = np.full(n, self.block_size, np.int64)
        if n and self.last_block_partial[i]:
            out[-1] = int(self.input_tokens[i]) - (n - 1) * self.block_size
        return out


# --------------------------------------------------------------------------- files


def _detect(path: Path) -> str:
    if path.is_dir():
        if any(path.glob("*.json")) or not any(path.glob("*.jsonl")):
            return "kv-cache-tester"
        return "mooncake"
    if path.suffix == ".jsonl":
        return "mooncake"
    try:
        with path.open("rb") as f:
            head = f.read(4096).lstrip()
    except OSError as exc:
        raise TraceFormatError(f"{path}: cannot read it: {exc}") from None
    if head.startswith(b"{") and b"\n" in head:
        first = head.split(b"\n", 1)[0]
        try:
            obj = orjson.loads(first)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and "timestamp" in obj:
            return "mooncake"
    return "kv-cache-tester"


def _parts(path: Path, fmt: str | None, notes: OddRecords) -> list[Part]:
    if not path.exists():
        raise TraceFormatError(f"{path}: no such trace file or folder")
    if fmt is not None and fmt not in FORMATS:
        raise TraceFormatError(f"trace format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    kind = fmt or _detect(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl" if kind == "mooncake" else "*.json"))
        if not files:
            raise TraceFormatError(f"{path}: folder holds no {kind} trace files")
    else:
        files = [path]
    reader = read_mooncake if kind == "mooncake" else read_kvcache
    parts = [reader(f, notes) for f in files]
    return _one_block_size(parts, notes) if path.is_dir() else parts


def _one_block_size(parts: list[Part], notes: OddRecords) -> list[Part]:
    """The parts of one folder that have its most common block size; the others are
    odd records (dropped)."""
    sizes = [p.block_size for p in parts if len(p)]
    if len(set(sizes)) <= 1:
        return parts
    common = max(set(sizes), key=lambda b: (sizes.count(b), -sizes.index(b)))
    keep = []
    for p in parts:
        if len(p) and p.block_size != common:
            notes.note("file.block_size_differs", p.source, f"block_size {p.block_size} "
                       f"differs from {common}, the block size of most files in the folder")
        else:
            keep.append(p)
    return keep


# --------------------------------------------------------------------------- assembly


def _gather_ids(parts: Sequence[Part], order: I64, offsets: I64, starts: I64,
                row_part: I64, id_base: I64) -> I64:
    """Every row's block ids (global: offset by its part's base), rows in ``order``."""
    block_ids = np.empty(int(offsets[-1]), np.int64)
    if np.array_equal(order, np.arange(len(order))):
        pos = 0
        for si, p in enumerate(parts):
            block_ids[pos : pos + len(p.flat)] = p.flat
            block_ids[pos : pos + len(p.flat)] += id_base[si]
            pos += len(p.flat)
        return block_ids
    flats = [p.flat for p in parts]
    o = offsets.tolist()
    for new, old in enumerate(order.tolist()):
        si = int(row_part[old])
        a0 = int(starts[old])
        dst = block_ids[o[new] : o[new + 1]]
        dst[:] = flats[si][a0 : a0 + o[new + 1] - o[new]]
        dst += id_base[si]
    return block_ids


def _assemble(parts: Sequence[Part], name: str, notes: OddRecords | None = None) -> Trace:
    """One trace of ``parts`` (empty parts, sessions without requests, are left out)."""
    parts = [p for p in parts if len(p)] or list(parts[:1])
    if not parts:
        raise TraceFormatError("no trace files given")
    bs = parts[0].block_size
    for p in parts:
        if p.block_size != bs:
            raise TraceFormatError(
                f"{p.source}: block_size {p.block_size} differs from {bs} of "
                f"{parts[0].source}; analyse traces with different block sizes separately"
            )
    n = sum(len(p) for p in parts)
    arrival = np.empty(n, np.float64)
    counts = np.empty(n, np.int64)
    starts = np.zeros(n, np.int64)  # start of each row's ids within its part
    row_part = np.empty(n, np.int64)
    id_base = np.empty(len(parts), np.int64)
    offset = 0
    row = 0
    session = np.empty(n, np.int32)
    parent = np.empty(n, np.int64)
    detached = np.zeros(n, np.bool_)
    for si, p in enumerate(parts):
        k = len(p)
        arrival[row : row + k] = p.arrival
        counts[row : row + k] = p.counts
        np.cumsum(p.counts[:-1], out=starts[row + 1 : row + k])
        row_part[row : row + k] = si
        id_base[si] = offset
        offset += p.nblocks
        session[row : row + k] = si
        pp = np.asarray(p.parent, np.int64)
        parent[row : row + k] = np.where(pp >= 0, pp + row, -1)
        if p.async_agents:
            detached[row : row + k] = np.isin(p.agent, sorted(p.async_agents))
        row += k
    order = np.argsort(arrival, kind="stable")
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts[order], out=offsets[1:])
    block_ids = _gather_ids(parts, order, offsets, starts, row_part, id_base)
    for p in parts:
        p.flat = np.zeros(0, np.int32)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)

    def col(attr: str, dtype: Any) -> Any:
        return np.concatenate([np.asarray(getattr(p, attr), dtype) for p in parts])[order]

    par = parent[order]
    par = np.where(par >= 0, rank[np.maximum(par, 0)], -1)
    return Trace(
        name=name,
        block_size=bs,
        arrival_s=arrival[order],
        input_tokens=col("inp", np.int64),
        output_tokens=col("out", np.int64),
        block_offsets=offsets,
        block_ids=block_ids,
        last_block_partial=col("partial", np.bool_),
        session=session[order],
        session_names=[p.session_name for p in parts],
        agent=col("agent", np.int32),
        parent_request=par,
        think_time_s=col("think", np.float64),
        api_time_s=col("api", np.float64),
        async_agent=detached[order],
        formats=tuple(sorted({p.fmt for p in parts})),
        odd_records=dict(notes.counts) if notes else {},
        odd_first=dict(notes.first) if notes else {},
    )


def _read(parts: list[Part], name: str, notes: OddRecords, where: str) -> Trace:
    if not any(len(p) for p in parts):
        raise TraceFormatError(f"{where}: no requests could be read ({notes.summary()})")
    return _assemble(parts, name, notes)


def read_trace(path: str | Path, *, fmt: str | None = None, strict: bool = False) -> Trace:
    """Read a kv-cache-tester session file, a folder of them (``*.json``, by name), or a
    Mooncake JSONL file (a folder of ``*.jsonl`` files). ``fmt`` forces
    ``"kv-cache-tester"`` or ``"mooncake"``.

    Odd records are counted in ``Trace.odd_records``; with ``strict`` the first one that
    needs an assumption raises :class:`TraceFormatError` naming the file and record."""
    p = Path(path)
    notes = OddRecords(strict=strict)
    return _read(_parts(p, fmt, notes), p.stem or str(p), notes, str(p))


def read_traces(paths: Iterable[str | Path], *, fmt: str | None = None,
                strict: bool = False) -> Trace:
    """Read several traces into one; block ids stay unique across files (``strict`` as
    in :func:`read_trace`)."""
    ps = [Path(p) for p in paths]
    if not ps:
        raise TraceFormatError("no trace files given")
    notes = OddRecords(strict=strict)
    parts: list[Part] = []
    for p in ps:
        parts.extend(_parts(p, fmt, notes))
    name = "+".join(p.stem or str(p) for p in ps) if len(ps) <= 3 else f"{len(ps)} traces"
    return _read(parts, name, notes, ", ".join(map(str, ps)))


def build_trace(
    name: str,
    block_size: int,
    arrival_s: Sequence[float] | F64,
    input_tokens: Sequence[int] | I64,
    blocks: Sequence[Sequence[int] | I64],
    *,
    output_tokens: Sequence[int] | I64 | None = None,
    last_block_partial: Sequence[bool] | None = None,
    session: Sequence[int] | None = None,
    session_names: list[str] | None = None,
) -> Trace:
    """A :class:`Trace` from in-memory requests (ids need not be dense; they are one id
    space). Rows are sorted by arrival, ties in the given order."""
    n = len(arrival_s)
    if not (len(input_tokens) == len(blocks) == n):
        raise ValueError("arrival_s, input_tokens and blocks must have the same length")
    sess = list(session) if session is not None else [0] * n
    names = session_names or [f"session {i}" for i in range(max(sess, default=-1) + 1)]
    part = Part("<memory>", "memory", block_size, session_name=name)
    part.arrival = [float(x) for x in arrival_s]
    part.inp = [int(x) for x in input_tokens]
    part.out = [int(x) for x in output_tokens] if output_tokens is not None else [0] * n
    part.ids = [np.asarray(b, np.int64) for b in blocks]
    part.partial = [bool(x) for x in last_block_partial] if last_block_partial else [False] * n
    part.agent = [0] * n
    part.parent = [-1] * n
    part.think = [math.nan] * n
    part.api = [math.nan] * n
    t = _assemble([part.seal()], name)
    s = np.asarray(sess, np.int32)[np.argsort(np.asarray(arrival_s, np.float64), kind="stable")]
    return dataclasses.replace(t, session=s, session_names=names, formats=())
