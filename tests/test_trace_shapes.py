"""Every record shape the public trace sets can hold (kv-cache-tester Claude Code sessions,
Mooncake JSONL): read with a documented assumption and counted, or refused in strict
mode with the file and record named; async-launched subagents start at their marker;
random malformed records never raise anything but TraceFormatError."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pytest_ctxplat.analysis import analyze
from pytest_ctxplat.cli import main
from pytest_ctxplat.workload.traces import ODD_RECORD_KINDS, Trace, TraceFormatError, read_trace

FUZZ_EXAMPLES = int(os.environ.get("CTXPLAT_FUZZ_EXAMPLES", "30"))


def _kv(tmp_path: Path, requests: Any, name: str = "s.json", **top: Any) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps({"id": name.split(".")[0], "block_size": 4,
                             "hash_id_scope": "local", **top, "requests": requests}))
    return p


def _req(t: float, n_ids: int = 1, first: int = 1, **extra: Any) -> dict[str, Any]:
    """A request of ``n_ids`` full 4-token blocks (ids first..) and a 1-token tail."""
    return {"t": t, "type": "n", "in": 4 * n_ids + 1, "out": 2,
            "hash_ids": list(range(first, first + n_ids)), **extra}


def _rows(t: Trace) -> list[tuple[float, int, int, int]]:
    """(arrival, input tokens, blocks, agent) per row."""
    return [(round(float(t.arrival_s[i]), 6), int(t.input_tokens[i]),
             int(t.blocks_per_request[i]), int(t.agent[i])) for i in range(len(t))]


def _check_invariants(t: Trace) -> None:
    n = len(t)
    assert t.block_offsets.shape == (n + 1,) and t.block_offsets[0] == 0
    assert t.block_offsets[-1] == len(t.block_ids)
    assert (np.diff(t.arrival_s) >= 0).all() and np.isfinite(t.arrival_s).all()
    if len(t.block_ids):
        assert len(np.unique(t.block_ids)) == t.num_blocks == int(t.block_ids.max()) + 1
    for col in (t.input_tokens, t.output_tokens, t.last_block_partial, t.session, t.agent,
                t.parent_request, t.think_time_s, t.api_time_s, t.async_agent):
        assert len(col) == n
    assert (t.parent_request < np.arange(n)).all()
    assert (t.input_tokens >= 0).all() and (t.output_tokens >= 0).all()
    assert len(t.session_names) == len(np.unique(t.session))
    assert set(t.odd_records) <= set(ODD_RECORD_KINDS)
    assert set(t.odd_first) == set(t.odd_records) and min(t.odd_records.values(), default=1) > 0


Check = Callable[[Trace], Any]

# (case id, entries of one session (block size 4), odd kind, record named, check, expected)
KV_CASES: list[tuple[str, Any, str, str, Check, Any]] = [
    ("async subagent", [
        _req(0.0), _req(10.0, 2),
        {"t": 12.0, "type": "subagent", "agent_id": "a1", "status": "async_launched",
         "duration_ms": None, "total_tokens": None, "tool_use_count": None,
         "requests": [_req(0.0, 1, 50), _req(3.0, 2, 50)]},
        _req(13.0, 3)],
     "subagent.async_launched", "requests[2]", _rows,
     [(0.0, 5, 1, 0), (10.0, 9, 2, 0), (12.0, 5, 1, 1), (13.0, 13, 3, 0), (15.0, 9, 2, 1)]),
    ("blocking subagent, duration_ms null", [
        _req(0.0),
        {"t": 20.0, "type": "subagent", "status": "completed", "duration_ms": None,
         "requests": [_req(0.0), _req(2.0, api_time=1.5)]}],
     "subagent.duration_missing", "requests[1]", _rows,  # duration 2 + 1.5: starts at 16.5
     [(0.0, 5, 1, 0), (16.5, 5, 1, 1), (18.5, 5, 1, 1)]),
    ("unknown status", [
        _req(0.0), {"t": 20.0, "type": "subagent", "status": "failed", "duration_ms": 5000,
                    "requests": [_req(0.0)]}],
     "subagent.unknown_status", "requests[1]", _rows, [(0.0, 5, 1, 0), (15.0, 5, 1, 1)]),
    ("subagent nested in a subagent", [
        _req(0.0),
        {"t": 30.0, "type": "subagent", "duration_ms": 10000, "requests": [
            _req(0.0),
            {"t": 5.0, "type": "subagent", "duration_ms": 2000,
             "requests": [_req(0.0), _req(1.0)]}]}],
     "subagent.nested", "requests[1].requests[1]",
     lambda t: (_rows(t), t.parent_request.tolist()),
     ([(0.0, 5, 1, 0), (20.0, 5, 1, 1), (23.0, 5, 1, 2), (24.0, 5, 1, 2)], [-1, 0, 1, 1])),
    ("subagent without requests", [_req(0.0), {"t": 5.0, "type": "subagent",
                                               "duration_ms": 1}],
     "subagent.no_requests", "requests[1]", _rows, [(0.0, 5, 1, 0)]),
    ("subagent with no requests", [_req(0.0), {"t": 5.0, "type": "subagent",
                                               "duration_ms": 1, "requests": []}],
     "subagent.empty", "requests[1]", _rows, [(0.0, 5, 1, 0)]),
    ("t null: the previous request's", [_req(4.0), _req(9.0) | {"t": None}],
     "record.time_missing", "requests[1]", _rows, [(4.0, 5, 1, 0), (4.0, 5, 1, 0)]),
    ("t missing on the first", [{k: v for k, v in _req(0.0).items() if k != "t"}],
     "record.time_missing", "requests[0]", _rows, [(0.0, 5, 1, 0)]),
    ("out of order", [_req(5.0), _req(3.0, 2)],
     "record.out_of_order", "requests[1]", _rows, [(3.0, 9, 2, 0), (5.0, 5, 1, 0)]),
    ("in null", [_req(0.0, 2) | {"in": None}],
     "request.in_invalid", "requests[0]", _rows, [(0.0, 8, 2, 0)]),
    ("in below its ids", [_req(0.0, 2) | {"in": 5}],
     "request.in_below_hash_ids", "requests[0]", _rows, [(0.0, 8, 2, 0)]),
    ("tokens beyond the ids", [_req(0.0, 1) | {"in": 20}],
     "request.tokens_beyond_hash_ids", "requests[0]", _rows, [(0.0, 20, 1, 0)]),
    ("out null", [_req(0.0) | {"out": None}],
     "request.out_invalid", "requests[0]", lambda t: t.output_tokens.tolist(), [0]),
    ("hash_ids null", [_req(0.0) | {"hash_ids": None}],
     "request.hash_ids_invalid", "requests[0]", _rows, [(0.0, 5, 0, 0)]),
    ("hash_ids with a string", [_req(0.0, 3) | {"hash_ids": [1, 2, "x"], "in": 13}],
     "request.hash_ids_invalid", "requests[0]", _rows, [(0.0, 13, 2, 0)]),
    ("zero-length request", [_req(0.0) | {"in": 0, "hash_ids": []}, _req(1.0)],
     "request.empty", "requests[0]", _rows, [(0.0, 0, 0, 0), (1.0, 5, 1, 0)]),
    ("unknown key", [_req(0.0) | {"cache_creation": 7}],
     "record.unknown_key", "requests[0]", _rows, [(0.0, 5, 1, 0)]),
    ("unknown type", [_req(0.0) | {"type": "tool"}],
     "request.unknown_type", "requests[0]", _rows, [(0.0, 5, 1, 0)]),
    ("entry not an object", [_req(0.0), 42, None, [1]],
     "record.not_object", "requests[1]", _rows, [(0.0, 5, 1, 0)]),
    ("think_time not a number", [_req(0.0, think_time="slow", api_time=2)],
     "request.timing_invalid", "requests[0]",
     lambda t: (np.isnan(t.think_time_s).tolist(), t.api_time_s.tolist()), ([True], [2.0])),
]


def _strict_refuses(p: Path, kind: str, record: str) -> None:
    if ODD_RECORD_KINDS[kind].strict:
        with pytest.raises(TraceFormatError) as exc:
            read_trace(p, strict=True)
        assert str(exc.value).startswith(f"{p}: {record}: " if record else f"{p}: ")
        assert "strict" in str(exc.value)
    else:  # a shape the format allows: strict reads it too
        assert read_trace(p, strict=True).odd_records == {kind: 1}


@pytest.mark.parametrize("entries,kind,record,got,want",
                         [c[1:] for c in KV_CASES], ids=[c[0] for c in KV_CASES])
def test_kvcache_record_shape(tmp_path: Path, entries: Any, kind: str, record: str,
                              got: Check, want: Any) -> None:
    p = _kv(tmp_path, entries)
    t = read_trace(p)
    _check_invariants(t)
    assert got(t) == want
    assert set(t.odd_records) == {kind}
    assert t.odd_first[kind].startswith(f"{p}: {record}: ")
    report = t.odd_report()[kind]
    assert report["assumed"] == ODD_RECORD_KINDS[kind].assumed and report["count"] >= 1
    _strict_refuses(p, kind, record)


@pytest.mark.parametrize("top,kind,want_bs", [
    ({"block_size": 0}, "file.block_size", 64),
    ({"block_size": "4"}, "file.block_size", 64),
    ({"hash_id_scope": "shared"}, "file.hash_id_scope", 4),
    ({"generator": "v2"}, "record.unknown_key", 4),
])
def test_kvcache_session_fields(tmp_path: Path, top: dict[str, Any], kind: str,
                                want_bs: int) -> None:
    p = _kv(tmp_path, [{"t": 0.0, "in": 3, "hash_ids": []}], **top)
    t = read_trace(p)
    assert t.block_size == want_bs and t.odd_records == {kind: 1} and len(t) == 1
    _strict_refuses(p, kind, "top level" if kind == "record.unknown_key" else "")


def test_deep_nesting_is_cut_not_a_crash(tmp_path: Path) -> None:
    entries: list[Any] = [_req(0.0)]
    for _ in range(40):
        entries = [_req(0.0), {"t": 1.0, "type": "subagent", "duration_ms": 0,
                               "requests": entries}]
    t = read_trace(_kv(tmp_path, entries))
    assert t.odd_records["subagent.too_deep"] == 1
    assert t.odd_records["subagent.nested"] == 31 and int(t.agent.max()) == 32
    with pytest.raises(TraceFormatError, match=r"requests(\[1\]\.requests){32}\[1\]: subagent"):
        read_trace(tmp_path / "s.json", strict=True)


# (case id, lines, odd kind, line number named, check, expected)
GOOD = {"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}
MOONCAKE_CASES: list[tuple[str, list[str], str, int, Check, Any]] = [
    ("invalid JSON line", [json.dumps(GOOD), '{"timestamp": 1, "input_le'],
     "record.not_object", 2, _rows, [(0.0, 600, 2, 0)]),
    ("line is an array", [json.dumps(GOOD), "[1, 2]"], "record.not_object", 2, _rows,
     [(0.0, 600, 2, 0)]),
    ("timestamp missing", [json.dumps(GOOD | {"timestamp": 2000}),
                           json.dumps({k: v for k, v in GOOD.items() if k != "timestamp"})],
     "record.time_missing", 2, _rows, [(2.0, 600, 2, 0), (2.0, 600, 2, 0)]),
    ("timestamps out of order", [json.dumps(GOOD | {"timestamp": 3000}), json.dumps(GOOD)],
     "record.out_of_order", 2, lambda t: t.arrival_s.tolist(), [0.0, 3.0]),
    ("input_length null", [json.dumps(GOOD | {"input_length": None})],
     "request.in_invalid", 1, _rows, [(0.0, 1024, 2, 0)]),
    ("more ids than input_length", [json.dumps(GOOD | {"input_length": 100})],
     "request.in_below_hash_ids", 1,
     lambda t: (_rows(t), t.last_block_partial.tolist()), ([(0.0, 1024, 2, 0)], [False])),
    ("fewer ids than input_length", [json.dumps(GOOD | {"input_length": 2000})],
     "request.tokens_beyond_hash_ids", 1,
     lambda t: (_rows(t), t.last_block_partial.tolist()), ([(0.0, 2000, 2, 0)], [False])),
    ("hash_ids missing", [json.dumps({k: v for k, v in GOOD.items() if k != "hash_ids"})],
     "request.hash_ids_invalid", 1, _rows, [(0.0, 600, 0, 0)]),
    ("output_length null", [json.dumps(GOOD | {"output_length": None})],
     "request.out_invalid", 1, lambda t: t.output_tokens.tolist(), [0]),
    ("zero-length request", [json.dumps(GOOD | {"input_length": 0, "hash_ids": []}),
                             json.dumps(GOOD)],
     "request.empty", 1, _rows, [(0.0, 0, 0, 0), (0.0, 600, 2, 0)]),
    ("extra keys", [json.dumps(GOOD | {"session_id": "c1", "delay": 3})],
     "record.unknown_key", 1, _rows, [(0.0, 600, 2, 0)]),
]


@pytest.mark.parametrize("lines,kind,line,got,want", [c[1:] for c in MOONCAKE_CASES],
                         ids=[c[0] for c in MOONCAKE_CASES])
def test_mooncake_record_shape(tmp_path: Path, lines: list[str], kind: str, line: int,
                               got: Check, want: Any) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(lines) + "\n\n")  # a blank line is no record at all
    t = read_trace(p)
    _check_invariants(t)
    assert got(t) == want
    assert t.odd_records == {kind: 1}
    assert t.odd_first[kind].startswith(f"{p}:{line}: ")
    if ODD_RECORD_KINDS[kind].strict:
        with pytest.raises(TraceFormatError, match=rf"^{re.escape(str(p))}:{line}: .*strict"):
            read_trace(p, strict=True)


def test_a_file_with_nothing_readable_is_refused_naming_it(tmp_path: Path) -> None:
    p = _kv(tmp_path, [])
    with pytest.raises(TraceFormatError, match=rf"^{re.escape(str(p))}: no requests could be "
                                               r"read \(odd records: session.empty x1"):
        read_trace(p)
    q = tmp_path / "bad.json"
    q.write_text('{"requests": [')
    with pytest.raises(TraceFormatError, match=rf"{re.escape(str(q))}: invalid JSON"):
        read_trace(q)
    with pytest.raises(TraceFormatError, match=rf"^{re.escape(str(q))}: invalid JSON.*strict"):
        read_trace(q, strict=True)


def _mixed_folder(tmp_path: Path) -> Path:
    d = tmp_path / "sessions"
    d.mkdir()
    _kv(d, [_req(0.0), _req(1.0, 2)], "a_good.json")
    _kv(d, [_req(0.0), {"t": 5.0, "type": "subagent", "status": "async_launched",
                        "duration_ms": None, "requests": [_req(0.0, 1, 9)]}], "b_async.json")
    _kv(d, [_req(0.0) | {"in": None}, _req(2.0) | {"t": None}, "junk"], "c_odd.json")
    _kv(d, [], "d_empty.json")
    _kv(d, [{"t": 0.0, "in": 17, "hash_ids": [1]}], "e_other_block_size.json", block_size=16)
    (d / "f_broken.json").write_text("{not json")
    return d


def test_a_folder_mixing_good_and_odd_files_is_read(tmp_path: Path) -> None:
    d = _mixed_folder(tmp_path)
    t = read_trace(d)
    _check_invariants(t)
    assert t.session_names == ["a_good", "b_async", "c_odd"]
    assert len(t) == 2 + 2 + 2
    assert t.odd_records == {
        "subagent.async_launched": 1, "request.in_invalid": 1, "record.time_missing": 1,
        "record.not_object": 1, "session.empty": 1, "file.block_size_differs": 1,
        "file.unreadable": 1}
    assert t.odd_first["file.unreadable"].startswith(f"{d / 'f_broken.json'}: invalid JSON")


def test_analyze_reports_odd_records_and_strict_refuses(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _mixed_folder(tmp_path)
    out = tmp_path / "a.json"
    assert main(["analyze", str(d), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    odd = json.loads(out.read_text())["odd_records"]
    assert odd["record.not_object"] == {
        "count": 1, "assumed": ODD_RECORD_KINDS["record.not_object"].assumed, "strict": True,
        "first": f"{d / 'c_odd.json'}: requests[2]: an entry must be an object, got 'junk'"}
    assert sum(v["count"] for v in odd.values()) == 7
    assert "odd records: 7 (--strict refuses those marked *)" in printed
    for kind, v in odd.items():  # one line per kind: count and what was assumed
        mark = "*" if ODD_RECORD_KINDS[kind].strict else " "
        assert f" {mark}{kind}: {v['count']} - {v['assumed']} (first: " in printed
    assert main(["analyze", str(d), "--strict"]) == 2
    err = capsys.readouterr().err
    assert f"{d / 'c_odd.json'}: requests[0]: in must be an integer >= 0, got None" in err


def test_a_replayed_trace_notes_its_odd_records_in_the_result(tmp_path: Path) -> None:
    from pytest_ctxplat.api import simulate

    result = simulate("trace", "h100-llama8b", overrides={"path": str(_mixed_folder(
        tmp_path)), "time_scale": 0.01, "block_size": 4})
    assert result.metrics["requests"] == 6
    note = result.hit_rates.notes["trace.odd_records"]
    assert note.startswith("7 odd records read with an assumption (1 file.block_size_differs,")
    assert "1 subagent.async_launched" in note


def test_async_subagents_in_the_public_set_start_at_their_marker(tmp_path: Path) -> None:
    # the shape of trace_0295 in the public set: three async launches 40 ms apart, the
    # parent's next request 16 s later, long before the subagents end
    launch = {"type": "subagent", "subagent_type": "general-purpose", "duration_ms": None,
              "total_tokens": None, "tool_use_count": None, "status": "async_launched",
              "models": ["m"], "tool_tokens": 8249, "system_tokens": 552}
    entries = [_req(8743.0, 3, api_time=39.95, think_time=15.0)]
    entries += [launch | {"t": 8783.325 + k * 0.02, "agent_id": f"agent_00{k}",
                          "requests": [_req(0.0, 2, 100 * k + 100), _req(25.0, 3, 100 * k + 100)]}
                for k in range(3)]
    entries.append(_req(8799.0, 4, api_time=19.0, think_time=16.0))
    t = read_trace(_kv(tmp_path, entries), strict=True)
    assert t.odd_records == {"subagent.async_launched": 3}
    for a in (1, 2, 3):
        rows = np.flatnonzero(t.agent == a)
        assert t.arrival_s[rows].tolist() == pytest.approx(
            [8783.325 + (a - 1) * 0.02, 8808.325 + (a - 1) * 0.02])
        assert t.async_agent[rows].all() and t.parent_request[rows[0]] == 0
    assert not t.async_agent[t.agent == 0].any()
    # the parent's next request is at its own time, before the subagents' last requests
    main_rows = np.flatnonzero(t.agent == 0)
    assert t.arrival_s[main_rows].tolist() == [8743.0, 8799.0]


# --------------------------------------------------------------------------- fuzzing

KV_KEYS = ["t", "type", "in", "out", "hash_ids", "api_time", "think_time", "status",
           "duration_ms", "requests", "block_size", "hash_id_scope", "id", "x"]
SCALARS = (st.none() | st.booleans() | st.integers(-(2**66), 2**66)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=4))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(KV_KEYS), inner, max_size=4),
                      max_leaves=12)
NUMBERS = st.integers(-5, 300) | st.floats(-5, 300) | VALUES
IDS = st.lists(st.integers(-3, 40), max_size=6) | VALUES


def _mostly(good: st.SearchStrategy[Any], junk: st.SearchStrategy[Any],
            tenths: int = 8) -> st.SearchStrategy[Any]:
    """``good`` ``tenths`` times in ten, else ``junk``."""
    return st.integers(0, 9).flatmap(lambda k: good if k < tenths else junk)


REQUESTS = st.fixed_dictionaries({}, optional={
    "t": NUMBERS, "type": st.sampled_from(["n", "s", "x"]) | VALUES, "in": NUMBERS,
    "out": NUMBERS, "hash_ids": IDS, "api_time": NUMBERS, "think_time": NUMBERS,
    "x": VALUES})
ENTRIES: st.SearchStrategy[list[Any]] = st.deferred(
    lambda: st.lists(_mostly(REQUESTS | SUBAGENTS, VALUES), max_size=6))
SUBAGENTS = st.fixed_dictionaries({"type": st.just("subagent")}, optional={
    "t": NUMBERS, "duration_ms": NUMBERS | st.none(), "x": VALUES,
    "status": st.sampled_from(["completed", "async_launched", "failed"]) | VALUES,
    "requests": _mostly(ENTRIES, VALUES)})
SESSIONS = _mostly(st.fixed_dictionaries({"requests": _mostly(
    st.lists(REQUESTS | SUBAGENTS, min_size=1, max_size=3).flatmap(
        lambda head: ENTRIES.map(lambda rest: head + rest)), VALUES)}, optional={
    "block_size": st.sampled_from([4, 16]) | VALUES, "hash_id_scope": VALUES,
    "id": VALUES, "x": VALUES}), VALUES)
MOONCAKE_LINES = st.lists(_mostly(st.fixed_dictionaries({}, optional={
    "timestamp": NUMBERS, "input_length": st.integers(0, 3000) | VALUES,
    "output_length": NUMBERS, "hash_ids": IDS, "x": VALUES}), VALUES), max_size=8)
CUTS = _mostly(st.none(), st.integers(0, 300))  # some files are cut short


def _read_or_refuse(p: Path) -> None:
    """Read ``p`` leniently and strictly: a trace (analysable) or a TraceFormatError that
    names the file, and never anything else."""
    for strict in (False, True):
        try:
            t = read_trace(p, strict=strict)
        except TraceFormatError as exc:
            assert str(p) in str(exc)
            event(f"strict={strict}: refused")
            continue
        event(f"strict={strict}: read, {'with' if t.odd_records else 'no'} odd records")
        _check_invariants(t)
        if strict:
            assert not any(ODD_RECORD_KINDS[k].strict for k in t.odd_records)
        analyze(t, [60.0], lru_points=2).to_dict()


def _cut(text: str, cut: int | None) -> str:
    return text if cut is None else text[:cut]


@settings(max_examples=FUZZ_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(doc=SESSIONS, cut=CUTS)
def test_fuzzed_kvcache_sessions_read_or_raise_trace_format_error(doc: Any,
                                                                  cut: int | None) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "fuzz.json"
        p.write_text(_cut(json.dumps(doc), cut))
        _read_or_refuse(p)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(lines=MOONCAKE_LINES, cut=CUTS)
def test_fuzzed_mooncake_lines_read_or_raise_trace_format_error(lines: list[Any],
                                                                cut: int | None) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "fuzz.jsonl"
        p.write_text(_cut("\n".join(json.dumps(x) for x in lines), cut))
        _read_or_refuse(p)
