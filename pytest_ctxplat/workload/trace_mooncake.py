"""Reader of Mooncake JSONL traces (FAST'25 release: conversation, toolagent, synthetic).

One JSON object a line: ``timestamp`` (milliseconds from the trace's start),
``input_length``, ``output_length`` and ``hash_ids`` (one id per 512-token block,
prefix-chained, one id space for the whole file; the last block may be partial). Blank
lines are skipped; anything else that does not fit is an odd record (see
:mod:`.trace_records`): counted, or refused in strict mode.
"""

from __future__ import annotations

import math
from pathlib import Path

import orjson

from .trace_records import (
    OddRecords,
    Part,
    bad_element,
    count_value,
    ids_value,
    time_value,
)

__all__ = ["MOONCAKE_BLOCK_SIZE", "read_mooncake"]

MOONCAKE_BLOCK_SIZE = 512
KEYS = frozenset({"timestamp", "input_length", "output_length", "hash_ids"})


def read_mooncake(path: Path, notes: OddRecords) -> Part:
    """The requests of one JSONL file (empty, with the reason noted, if unreadable)."""
    src = str(path)
    part = Part(src, "mooncake", MOONCAKE_BLOCK_SIZE, notes, session_name=path.stem)
    prev = 0.0
    try:
        with path.open("rb") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    prev = _line(part, line, f"{src}:{lineno}", prev)
    except OSError as exc:
        notes.note("file.unreadable", src, f"cannot read it: {exc}")
        return part.seal()
    if not part.arrival:
        notes.note("session.empty", src, "no requests in the file")
    return part.seal()


def _line(part: Part, line: bytes, w: str, prev: float) -> float:
    """Read one line into ``part``; return its timestamp (ms, as read or assumed)."""
    notes, bs = part.notes, MOONCAKE_BLOCK_SIZE
    try:
        e = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        notes.note("record.not_object", w, f"invalid JSON: {exc}")
        return prev
    if not isinstance(e, dict):
        notes.note("record.not_object", w, f"each line must be a JSON object, got {e!r:.60}")
        return prev
    if not e.keys() <= KEYS:
        extra = ", ".join(repr(str(k)) for k in sorted(e.keys() - KEYS))
        notes.note("record.unknown_key", w, f"unknown key(s) {extra}")
    ts = time_value(e.get("timestamp"))
    if ts is None:
        notes.note("record.time_missing", w, "timestamp must be a finite number of "
                   f"milliseconds, got {e.get('timestamp')!r:.60}")
        ts = prev
    elif ts < prev:
        notes.note("record.out_of_order", w, f"timestamp {ts:g} is earlier than the "
                   f"previous request's {prev:g}" if prev else f"timestamp {ts:g} is negative")
    raw = e.get("hash_ids")
    ids, ok = ids_value(raw)
    if not ok:
        notes.note("request.hash_ids_invalid", w,
                   f"hash_ids must be a list of integers, found {bad_element(raw)}")
    n = len(ids)
    inp = count_value(e.get("input_length"))
    partial = False
    if inp is None:
        notes.note("request.in_invalid", w, "input_length must be an integer >= 0, got "
                   f"{e.get('input_length')!r:.60}")
        inp = n * bs
    elif n and inp <= (n - 1) * bs:
        notes.note("request.in_below_hash_ids", w, f"{n} hash_ids of {bs} tokens do not "
                   f"match input_length={inp} (expected {(n - 1) * bs + 1}..{n * bs} tokens)")
        inp = n * bs
    elif inp > n * bs and ok:
        notes.note("request.tokens_beyond_hash_ids", w, f"{n} hash_ids of {bs} tokens do "
                   f"not match input_length={inp} (expected {max(0, (n - 1) * bs + 1)}.."
                   f"{n * bs} tokens)")
    else:
        partial = n > 0 and inp < n * bs
    if not inp:
        notes.note("request.empty", w, "input_length=0: no input tokens")
    out = count_value(e.get("output_length", 0))
    if out is None:
        notes.note("request.out_invalid", w, "output_length must be an integer >= 0, got "
                   f"{e.get('output_length')!r:.60}")
        out = 0
    part.arrival.append(ts / 1000.0)
    part.inp.append(inp)
    part.out.append(out)
    part.ids.append(ids)
    part.partial.append(partial)
    part.agent.append(0)
    part.parent.append(-1)
    part.think.append(math.nan)
    part.api.append(math.nan)
    return ts
