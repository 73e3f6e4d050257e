"""Readers for public request traces: kv-cache-tester sessions and Mooncake JSONL.

Both formats describe requests by the ids of their input blocks (prefix-chained: equal
ids mean equal content *and* equal prefix). :func:`read_trace` turns one file or folder
into a columnar :class:`Trace`; :func:`read_traces` concatenates several.

Conventions (see ``docs/reference/analysis.md``):

* Rows are requests in arrival order; ties keep file order (the order in which the
  requests appear in the files, a subagent's requests at the place of its entry).
* Block ids are made dense (``0 .. num_blocks-1``) and globally unique: kv-cache-tester
  ids with ``hash_id_scope: local`` are per file, Mooncake ids are per file too (one id
  space for the whole file).
* kv-cache-tester: every session file starts at time 0, so several files replay as
  concurrent users starting together. A subagent entry's own ``t`` is when it
  *completed*; its requests start at ``t - duration_ms/1000`` plus their own ``t``.
* Mooncake: ``timestamp`` is in milliseconds; the last block of a request may cover fewer
  than ``block_size`` tokens (``last_block_partial``).
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

from ..errors import ConfigError

__all__ = ["FORMATS", "Trace", "TraceFormatError", "build_trace", "read_trace", "read_traces"]

FORMATS = ("kv-cache-tester", "mooncake")
MOONCAKE_BLOCK_SIZE = 512

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


class TraceFormatError(ConfigError):
    """A trace file that cannot be read; the message names the file and line or entry."""


@dataclass(frozen=True, eq=False)
class Trace:
    """Requests of one or more traces, columnar, one row per request in arrival order.

    Request ``i`` reads blocks ``block_ids[block_offsets[i]:block_offsets[i + 1]]``.
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
    formats: tuple[str, ...] = field(default=())

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


# --------------------------------------------------------------------------- parts


@dataclass
class _Part:
    """Requests of one file before sorting, with file-local dense ids."""

    source: str
    fmt: str
    block_size: int
    arrival: list[float] = field(default_factory=list)
    inp: list[int] = field(default_factory=list)
    out: list[int] = field(default_factory=list)
    ids: list[npt.NDArray[np.int64]] = field(default_factory=list)
    partial: list[bool] = field(default_factory=list)
    agent: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)  # index within this part, -1 if none
    think: list[float] = field(default_factory=list)
    api: list[float] = field(default_factory=list)
    session_name: str = ""
    flat: npt.NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, np.int32))
    counts: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    nblocks: int = 0

    def seal(self) -> _Part:
        """Turn the per-request id arrays into one dense int32 array (memory-lean)."""
        self.counts = np.fromiter((len(x) for x in self.ids), np.int64, len(self.ids))
        flat = np.concatenate(self.ids) if self.ids else np.zeros(0, np.int64)
        self.ids = []
        dense, self.nblocks = _densify(flat)
        self.flat = dense.astype(np.int32)
        return self


def _num(v: Any, where: str, what: str, *, allow_none: bool = False) -> float:
    if v is None and allow_none:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TraceFormatError(f"{where}: {what} must be a number, got {v!r}")
    x = float(v)
    if not math.isfinite(x):
        raise TraceFormatError(f"{where}: {what} must be finite, got {v!r}")
    return x


def _count(v: Any, where: str, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise TraceFormatError(f"{where}: {what} must be an integer >= 0, got {v!r}")
    return v


def _ids(v: Any, where: str) -> npt.NDArray[np.int64]:
    if not isinstance(v, list):
        raise TraceFormatError(f"{where}: hash_ids must be a list of integers, got {v!r:.60}")
    if not v:
        return np.zeros(0, np.int64)
    try:
        arr = np.array(v)
    except (TypeError, ValueError, OverflowError):
        arr = np.array(v, dtype=object)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        bad = next((x for x in v if isinstance(x, bool) or not isinstance(x, int)), v[0])
        raise TraceFormatError(f"{where}: hash_ids must hold integers, found {bad!r:.60}")
    return arr.astype(np.int64, copy=False)


def _read_kvcache(path: Path) -> _Part:
    src = str(path)
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise TraceFormatError(f"{src}: invalid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("requests"), list):
        raise TraceFormatError(
            f"{src}: a kv-cache-tester session is a JSON object with a 'requests' list"
        )
    bs = data.get("block_size", 64)
    if isinstance(bs, bool) or not isinstance(bs, int) or bs <= 0:
        raise TraceFormatError(f"{src}: block_size must be a positive integer, got {bs!r}")
    scope = data.get("hash_id_scope", "local")
    if scope not in ("local", "global"):
        raise TraceFormatError(
            f"{src}: hash_id_scope must be 'local' or 'global', got {scope!r}"
        )
    part = _Part(src, "kv-cache-tester", bs, session_name=str(data.get("id") or path.stem))
    n_agents = [0]

    def walk(entries: list[Any], base: float, agent: int, where: str) -> None:
        own: list[tuple[float, int]] = []
        for j, e in enumerate(entries):
            w = f"{where}[{j}]"
            if not isinstance(e, dict):
                raise TraceFormatError(f"{src}: {w}: an entry must be an object, got {e!r:.60}")
            if e.get("type") == "subagent":
                t = _num(e.get("t"), f"{src}: {w}", "t")
                dur = _num(e.get("duration_ms"), f"{src}: {w}", "duration_ms")
                if dur < 0:
                    raise TraceFormatError(f"{src}: {w}: duration_ms must be >= 0, got {dur}")
                sub = e.get("requests")
                if not isinstance(sub, list):
                    raise TraceFormatError(f"{src}: {w}: a subagent needs a 'requests' list")
                start = base + t - dur / 1000.0
                # the parent's latest request that arrived at or before the start
                parent = -1
                for at, idx in reversed(own):
                    if at <= start:
                        parent = idx
                        break
                n_agents[0] += 1
                me = n_agents[0]
                first = len(part.arrival)
                walk(sub, start, me, f"{w}.requests")
                _set_parent(part, first, me, parent)
                continue
            t = _num(e.get("t"), f"{src}: {w}", "t")
            inp = _count(e.get("in"), f"{src}: {w}", "in")
            out = _count(e.get("out", 0), f"{src}: {w}", "out")
            ids = _ids(e.get("hash_ids", []), f"{src}: {w}")
            if len(ids) * bs > inp:
                raise TraceFormatError(
                    f"{src}: {w}: {len(ids)} hash_ids of {bs} tokens exceed in={inp}"
                )
            idx = len(part.arrival)
            part.arrival.append(base + t)
            part.inp.append(inp)
            part.out.append(out)
            part.ids.append(ids)
            part.partial.append(False)
            part.agent.append(agent)
            part.parent.append(-3)  # filled by the caller for subagents, -1 for main
            part.think.append(_num(e.get("think_time"), f"{src}: {w}", "think_time",
                                   allow_none=True))
            part.api.append(_num(e.get("api_time"), f"{src}: {w}", "api_time",
                                 allow_none=True))
            own.append((base + t, idx))

    walk(data["requests"], 0.0, 0, "requests")
    part.parent = [-1 if p == -3 else p for p in part.parent]
    return part.seal()


def _set_parent(part: _Part, first: int, agent: int, parent: int) -> None:
    for k in range(first, len(part.arrival)):
        if part.agent[k] == agent and part.parent[k] == -3:
            part.parent[k] = parent


def _read_mooncake(path: Path) -> _Part:
    src = str(path)
    part = _Part(src, "mooncake", MOONCAKE_BLOCK_SIZE, session_name=path.stem)
    bs = MOONCAKE_BLOCK_SIZE
    with path.open("rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            w = f"{src}:{lineno}"
            try:
                e = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise TraceFormatError(f"{w}: invalid JSON: {exc}") from None
            if not isinstance(e, dict):
                raise TraceFormatError(f"{w}: each line must be a JSON object")
            ts = _num(e.get("timestamp"), w, "timestamp")
            inp = _count(e.get("input_length"), w, "input_length")
            out = _count(e.get("output_length", 0), w, "output_length")
            ids = _ids(e.get("hash_ids"), w)
            n = len(ids)
            if n and not ((n - 1) * bs < inp <= n * bs):
                raise TraceFormatError(
                    f"{w}: {n} hash_ids of {bs} tokens do not match input_length={inp} "
                    f"(expected {(n - 1) * bs + 1}..{n * bs} tokens)"
                )
            part.arrival.append(ts / 1000.0)
            part.inp.append(inp)
            part.out.append(out)
            part.ids.append(ids)
            part.partial.append(bool(n) and inp < n * bs)
            part.agent.append(0)
            part.parent.append(-1)
            part.think.append(math.nan)
            part.api.append(math.nan)
    if not part.arrival:
        raise TraceFormatError(f"{src}: no requests in the file")
    return part.seal()


def _detect(path: Path) -> str:
    if path.is_dir():
        return "kv-cache-tester"
    if path.suffix == ".jsonl":
        return "mooncake"
    with path.open("rb") as f:
        head = f.read(4096).lstrip()
    if head.startswith(b"{") and b"\n" in head:
        first = head.split(b"\n", 1)[0]
        try:
            obj = orjson.loads(first)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and "timestamp" in obj:
            return "mooncake"
    return "kv-cache-tester"


def _parts(path: Path, fmt: str | None) -> list[_Part]:
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
    reader = _read_mooncake if kind == "mooncake" else _read_kvcache
    return [reader(f) for f in files]


# --------------------------------------------------------------------------- assembly


def _densify(ids: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], int]:
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


def _gather_ids(parts: Sequence[_Part], order: npt.NDArray[np.int64],
                offsets: npt.NDArray[np.int64], starts: npt.NDArray[np.int64],
                row_part: npt.NDArray[np.int64], id_base: npt.NDArray[np.int64]
                ) -> npt.NDArray[np.int64]:
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


def _assemble(parts: Sequence[_Part], name: str) -> Trace:
    if not parts:
        raise TraceFormatError("no trace files given")
    bs = parts[0].block_size
    for p in parts:
        if p.block_size != bs:
            raise TraceFormatError(
                f"{p.source}: block_size {p.block_size} differs from {bs} of "
                f"{parts[0].source}; analyse traces with different block sizes separately"
            )
    n = sum(len(p.arrival) for p in parts)
    arrival = np.empty(n, np.float64)
    counts = np.empty(n, np.int64)
    starts = np.empty(n, np.int64)  # start of each row's ids within its part
    row_part = np.empty(n, np.int64)
    id_base = np.empty(len(parts), np.int64)
    offset = 0
    row = 0
    session_names: list[str] = []
    session = np.empty(n, np.int32)
    parent = np.empty(n, np.int64)
    for si, p in enumerate(parts):
        k = len(p.arrival)
        arrival[row : row + k] = p.arrival
        counts[row : row + k] = p.counts
        starts[row] = 0
        np.cumsum(p.counts[:-1], out=starts[row + 1 : row + k])
        row_part[row : row + k] = si
        id_base[si] = offset
        offset += p.nblocks
        session[row : row + k] = si
        pp = np.asarray(p.parent, np.int64)
        parent[row : row + k] = np.where(pp >= 0, pp + row, -1)
        session_names.append(p.session_name)
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
        session_names=session_names,
        agent=col("agent", np.int32),
        parent_request=par,
        think_time_s=col("think", np.float64),
        api_time_s=col("api", np.float64),
        formats=tuple(sorted({p.fmt for p in parts})),
    )


def read_trace(path: str | Path, *, fmt: str | None = None) -> Trace:
    """Read a kv-cache-tester session file, a folder of them (``*.json``, by name), or a
    Mooncake JSONL file. ``fmt`` forces ``"kv-cache-tester"`` or ``"mooncake"``."""
    p = Path(path)
    return _assemble(_parts(p, fmt), p.stem or str(p))


def read_traces(paths: Iterable[str | Path], *, fmt: str | None = None) -> Trace:
    """Read several traces into one; block ids stay unique across files."""
    ps = [Path(p) for p in paths]
    parts: list[_Part] = []
    for p in ps:
        parts.extend(_parts(p, fmt))
    name = "+".join(p.stem or str(p) for p in ps) if len(ps) <= 3 else f"{len(ps)} traces"
    return _assemble(parts, name)


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
    part = _Part("<memory>", "memory", block_size, session_name=name)
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
