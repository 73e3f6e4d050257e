"""Reader of kv-cache-tester session files (Claude Code traces), one JSON object a file.

A session has ``block_size`` (64), ``hash_id_scope`` and a ``requests`` list. A request
entry has ``t`` (seconds from the start of its list), ``type`` (``n`` or ``s``), ``in``,
``out``, ``hash_ids`` (one id per FULL input block), ``api_time``, ``think_time`` and
more. A subagent entry (``type: subagent``) has its own ``requests`` timed from the
subagent's start, and a ``status``:

* ``completed`` (or absent): the marker was written when the subagent finished, so it
  started at ``t - duration_ms/1000``; the parent waited for it.
* ``async_launched`` (``duration_ms`` null): the marker was written at the launch, so it
  started at ``t``; the parent did not wait for it.

Anything else is an odd record (see :mod:`.trace_records`): counted, or refused in strict
mode.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson

from .trace_records import (
    I64,
    OddRecords,
    Part,
    bad_element,
    count_value,
    ids_value,
    optional_time,
    time_value,
)

__all__ = ["read_kvcache"]

DEFAULT_BLOCK_SIZE = 64
MAX_BLOCK_SIZE = 2**31
MAX_DEPTH = 32  # subagent nesting levels read

TOP_KEYS = frozenset({"id", "block_size", "hash_id_scope", "tool_tokens", "system_tokens",
                      "models", "totals", "requests"})
REQUEST_KEYS = frozenset({"t", "type", "model", "in", "out", "hash_ids", "input_types",
                          "output_types", "stop", "api_time", "think_time", "ttft"})
SUBAGENT_KEYS = frozenset({"t", "type", "agent_id", "subagent_type", "duration_ms",
                           "total_tokens", "tool_use_count", "status", "models",
                           "tool_tokens", "system_tokens", "requests"})
REQUEST_TYPES = (None, "n", "s")
STATUSES = (None, "completed", "async_launched")
_PENDING = -3  # parent not set yet (a subagent's rows until its walk returns)


def _unknown(e: dict[str, Any], known: frozenset[str]) -> str:
    extra = sorted(str(k) for k in e.keys() - known)
    return f"unknown key{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))}"


def read_kvcache(path: Path, notes: OddRecords) -> Part:
    """The requests of one session file (empty, with the reason noted, if unreadable)."""
    src = str(path)
    part = Part(src, "kv-cache-tester", DEFAULT_BLOCK_SIZE, notes, session_name=path.stem)
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        notes.note("file.unreadable", src, f"invalid JSON: {exc}")
        return part.seal()
    except OSError as exc:
        notes.note("file.unreadable", src, f"cannot read it: {exc}")
        return part.seal()
    if not isinstance(data, dict) or not isinstance(data.get("requests"), list):
        notes.note("file.unreadable", src, "a kv-cache-tester session is a JSON object "
                   "with a 'requests' list")
        return part.seal()
    if not data.keys() <= TOP_KEYS:
        notes.note("record.unknown_key", f"{src}: top level", _unknown(data, TOP_KEYS))
    bs = data.get("block_size", DEFAULT_BLOCK_SIZE)
    if type(bs) is not int or not 0 < bs <= MAX_BLOCK_SIZE:
        notes.note("file.block_size", src,
                   f"block_size must be a positive integer, got {bs!r:.60}")
        bs = DEFAULT_BLOCK_SIZE
    part.block_size = bs
    scope = data.get("hash_id_scope", "local")
    if scope not in ("local", "global"):
        notes.note("file.hash_id_scope", src,
                   f"hash_id_scope must be 'local' or 'global', got {scope!r:.60}")
    sid = data.get("id")
    if isinstance(sid, (str, int)) and not isinstance(sid, bool) and str(sid):
        part.session_name = str(sid)
    if not data["requests"]:
        notes.note("session.empty", src, "the session has no requests")
    _Walker(part, src).walk(data["requests"], 0.0, 0, "requests", 0)
    part.parent = [-1 if p == _PENDING else p for p in part.parent]
    return part.seal()


class _Walker:
    """Walks a session's entries, subagents recursively, into ``part``'s rows."""

    def __init__(self, part: Part, src: str) -> None:
        self.part = part
        self.src = src
        self.notes = part.notes
        self.bs = part.block_size
        self.agents = 0

    def walk(self, entries: list[Any], base: float, agent: int, where: str,
             depth: int) -> None:
        """Read ``entries`` of ``agent``, whose list starts at ``base`` seconds."""
        own: list[tuple[float, int]] = []  # (arrival, row) of this agent's requests
        prev = 0.0  # the previous request's t in this list
        for j, e in enumerate(entries):
            w = f"{where}[{j}]"
            if not isinstance(e, dict):
                self.notes.note("record.not_object", f"{self.src}: {w}",
                                f"an entry must be an object, got {e!r:.60}")
                continue
            if e.get("type") == "subagent":
                self.subagent(e, base, prev, own, w, depth)
                continue
            t = self.request(e, base, prev, agent, w)
            own.append((base + t, len(self.part.arrival) - 1))
            prev = t

    def _time(self, e: dict[str, Any], prev: float, w: str) -> float:
        t = time_value(e.get("t"))
        if t is None:
            self.notes.note("record.time_missing", f"{self.src}: {w}",
                            f"t must be a finite number of seconds, got {e.get('t')!r:.60}")
            return prev
        return t

    def request(self, e: dict[str, Any], base: float, prev: float, agent: int,
                w: str) -> float:
        """Append one request entry; return its ``t`` (as read or assumed)."""
        notes, bs = self.notes, self.bs
        if e.get("type") not in REQUEST_TYPES:
            notes.note("request.unknown_type", f"{self.src}: {w}",
                       f"type must be 'n', 's' or 'subagent', got {e.get('type')!r:.60}")
        if not e.keys() <= REQUEST_KEYS:
            notes.note("record.unknown_key", f"{self.src}: {w}", _unknown(e, REQUEST_KEYS))
        t = self._time(e, prev, w)
        if t < prev:
            notes.note("record.out_of_order", f"{self.src}: {w}",
                       f"t={t:g} is earlier than the previous request's t={prev:g}"
                       if prev else f"t={t:g} is negative")
        raw = e.get("hash_ids")
        ids, ok = ids_value(raw)
        if not ok:
            notes.note("request.hash_ids_invalid", f"{self.src}: {w}",
                       f"hash_ids must be a list of integers, found {bad_element(raw)}")
        n = len(ids)
        inp = count_value(e.get("in"))
        if inp is None:
            notes.note("request.in_invalid", f"{self.src}: {w}",
                       f"in must be an integer >= 0, got {e.get('in')!r:.60}")
            inp = n * bs
        elif n * bs > inp:
            notes.note("request.in_below_hash_ids", f"{self.src}: {w}",
                       f"{n} hash_ids of {bs} tokens exceed in={inp}")
            inp = n * bs
        elif inp - n * bs >= bs and ok:
            notes.note("request.tokens_beyond_hash_ids", f"{self.src}: {w}",
                       f"in={inp} is {inp - n * bs} tokens past its {n} hash_ids of {bs} "
                       "tokens (the tail under one block has no id; more should)")
        if not inp:
            notes.note("request.empty", f"{self.src}: {w}", "in=0: no input tokens")
        out = count_value(e.get("out", 0))
        if out is None:
            notes.note("request.out_invalid", f"{self.src}: {w}",
                       f"out must be an integer >= 0, got {e.get('out')!r:.60}")
            out = 0
        self._append(e, base + t, inp, out, ids, agent, w)
        return t

    def _append(self, e: dict[str, Any], at: float, inp: int, out: int, ids: I64,
                agent: int, w: str) -> None:
        p = self.part
        p.arrival.append(at)
        p.inp.append(inp)
        p.out.append(out)
        p.ids.append(ids)
        p.partial.append(False)
        p.agent.append(agent)
        p.parent.append(_PENDING if agent else -1)
        for key, col in (("think_time", p.think), ("api_time", p.api)):
            v = optional_time(e.get(key))
            if v is None:
                self.notes.note("request.timing_invalid", f"{self.src}: {w}",
                                f"{key} must be a number of seconds, got {e.get(key)!r:.60}")
                v = math.nan
            col.append(v)

    def subagent(self, e: dict[str, Any], base: float, prev: float,
                 own: list[tuple[float, int]], w: str, depth: int) -> None:
        """Read a subagent entry of the list that starts at ``base``."""
        notes, where = self.notes, f"{self.src}: {w}"
        if not e.keys() <= SUBAGENT_KEYS:
            notes.note("record.unknown_key", where, _unknown(e, SUBAGENT_KEYS))
        sub = e.get("requests")
        if not isinstance(sub, list):
            notes.note("subagent.no_requests", where,
                       f"a subagent needs a 'requests' list, got {sub!r:.60}")
            return
        if depth >= MAX_DEPTH:
            notes.note("subagent.too_deep", where, f"subagent nested {depth + 1} levels deep")
            return
        if depth:
            notes.note("subagent.nested", where, "a subagent inside a subagent")
        if not sub:
            notes.note("subagent.empty", where, "the subagent has no requests")
            return
        start = base + self._time(e, prev, w) - self._duration(e, sub, where)
        self.agents += 1
        me = self.agents
        if e.get("status") == "async_launched":
            self.part.async_agents.add(me)
        first = len(self.part.arrival)
        self.walk(sub, start, me, f"{w}.requests", depth + 1)
        self._set_parent(first, me, start, own)

    def _duration(self, e: dict[str, Any], sub: list[Any], where: str) -> float:
        """Seconds from the subagent's start to its marker (0 when async-launched)."""
        status = e.get("status")
        if status == "async_launched":
            self.notes.note("subagent.async_launched", where,
                            f"async-launched subagent {e.get('agent_id')!r:.40}")
            return 0.0
        if status not in STATUSES:
            self.notes.note("subagent.unknown_status", where,
                            f"status must be 'completed' or 'async_launched', got "
                            f"{status!r:.60}")
        raw = e.get("duration_ms")
        dur = time_value(raw)
        if dur is not None and dur >= 0:
            return dur / 1000.0
        self.notes.note("subagent.duration_missing", where,
                        f"duration_ms must be a number >= 0, got {raw!r:.60}")
        return _last_request_end(sub)

    def _set_parent(self, first: int, me: int, start: float,
                    own: list[tuple[float, int]]) -> None:
        """The parent of ``me``'s rows: the enclosing agent's latest request that arrived
        at or before the subagent started (or its first request, if earlier)."""
        p = self.part
        rows = [k for k in range(first, len(p.arrival))
                if p.agent[k] == me and p.parent[k] == _PENDING]
        if not rows:
            return
        ref = min(start, min(p.arrival[k] for k in rows))
        parent = next((idx for at, idx in reversed(own) if at <= ref), -1)
        for k in rows:
            p.parent[k] = parent


def _last_request_end(entries: list[Any]) -> float:
    """Seconds from a subagent's start to the end of its last request (its ``t`` plus
    ``api_time`` where known), from the entries as written."""
    end = 0.0
    for e in entries:
        if isinstance(e, dict):
            t = time_value(e.get("t"))
            if t is not None:
                api = time_value(e.get("api_time"))
                end = max(end, t + (api if api is not None and api > 0 else 0.0))
    return end

