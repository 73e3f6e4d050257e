"""Trace readers: kv-cache-tester sessions (files, folders) and Mooncake JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from workload_support import FIXTURE_TRACES, SHARED_TRACES, needs_samples

from pytest_ctxplat.workload.traces import (
    TraceFormatError,
    build_trace,
    read_trace,
    read_traces,
)

FIXTURES = FIXTURE_TRACES
SHARED = SHARED_TRACES


def _count_requests(entries: list[dict]) -> int:
    n = 0
    for e in entries:
        n += _count_requests(e["requests"]) if e.get("type") == "subagent" else 1
    return n


def _check_invariants(t) -> None:
    n = len(t)
    assert t.block_offsets.shape == (n + 1,) and t.block_offsets[0] == 0
    assert t.block_offsets[-1] == len(t.block_ids)
    assert (np.diff(t.arrival_s) >= 0).all()
    assert t.block_ids.dtype == np.int64 and t.arrival_s.dtype == np.float64
    # dense ids: every id in 0..num_blocks-1 is used
    assert len(np.unique(t.block_ids)) == t.num_blocks == int(t.block_ids.max()) + 1
    for col in (t.input_tokens, t.output_tokens, t.last_block_partial, t.session, t.agent,
                t.parent_request, t.think_time_s, t.api_time_s):
        assert len(col) == n
    assert (t.parent_request < np.arange(n)).all()


@needs_samples
@pytest.mark.parametrize(
    "name,expected", [("trace_0504", 3), ("trace_0313", 48), ("trace_0291", 32),
                      ("trace_0277", 53), ("trace_0254", 162)]
)
def test_kvcache_request_counts_match_the_file(name: str, expected: int) -> None:
    path = SHARED / "weka" / f"{name}.json"
    data = json.loads(path.read_text())
    n = _count_requests(data["requests"])
    assert n == expected
    t = read_trace(path)
    assert len(t) == n
    assert t.block_size == 64 and t.session_names == [data["id"]]
    _check_invariants(t)
    # ids cover full blocks only: no partial last block, and the tail fits under 64 tokens
    assert not t.last_block_partial.any()
    tail = t.input_tokens - t.blocks_per_request * 64
    assert (tail >= 0).all() and (tail < 64).all()


@needs_samples
def test_trace_0254_subagents_start_at_completion_minus_duration() -> None:
    t = read_trace(SHARED / "weka" / "trace_0254.json")
    starts = {}
    for a in range(1, int(t.agent.max()) + 1):
        rows = np.flatnonzero(t.agent == a)
        starts[a] = float(t.arrival_s[rows[0]])
        # the parent request is a main-agent request that arrived before the start
        p = int(t.parent_request[rows[0]])
        assert p >= 0 and t.agent[p] == 0 and t.arrival_s[p] <= starts[a]
        assert (t.parent_request[rows] == p).all()
    assert len(starts) == 5
    parallel = [a for a, s in starts.items() if abs(s - 53.0) < 0.05]
    assert len(parallel) == 3
    # the parent's next request comes after the last of the three completes (149.5 s)
    main = t.arrival_s[t.agent == 0]
    after = main[main > 53.0][0]
    assert after >= 149.5
    # the first subagent's second request is 4 s after its start (inner t = 4.0)
    rows = np.flatnonzero(t.agent == 1)
    assert t.arrival_s[rows[1]] - t.arrival_s[rows[0]] == pytest.approx(4.0)
    assert np.isfinite(t.think_time_s).all() and np.isfinite(t.api_time_s).sum() > 100


@needs_samples
def test_folder_ids_are_unique_across_files() -> None:
    files = sorted((SHARED / "weka").glob("*.json"))
    t = read_trace(SHARED / "weka")
    assert t.session_names == [json.loads(f.read_text())["id"] for f in files]
    _check_invariants(t)
    singles = [read_trace(f) for f in files]
    assert len(t) == sum(len(s) for s in singles)
    assert t.num_blocks == sum(s.num_blocks for s in singles)
    # each session's ids occupy their own range; no id is shared by two sessions
    owner = np.full(t.num_blocks, -1)
    for i in range(len(t)):
        b = t.blocks(i)
        assert ((owner[b] == -1) | (owner[b] == t.session[i])).all()
        owner[b] = t.session[i]
    # all local id 1 blocks (the first block of each session) are distinct
    firsts = {int(t.blocks(int(np.flatnonzero(t.session == s)[0]))[0]) for s in range(5)}
    assert len(firsts) == 5


@needs_samples
def test_mooncake_partial_last_block_and_global_ids() -> None:
    path = SHARED / "mooncake" / "conversation_trace.jsonl"
    t = read_trace(path)
    assert len(t) == 12031 and t.block_size == 512
    _check_invariants(t)
    lines = path.read_text().splitlines()
    first = json.loads(lines[0])
    assert t.input_tokens[0] == first["input_length"]
    assert t.last_block_partial[0] == (first["input_length"] % 512 != 0)
    assert t.block_tokens(0)[-1] == first["input_length"] - (len(first["hash_ids"]) - 1) * 512
    # id 0 starts many conversations: it maps to one dense id shared by those requests
    starts = {int(t.blocks(i)[0]) for i in range(20)}
    assert len(starts) < 20
    assert t.arrival_s[-1] == pytest.approx(json.loads(lines[-1])["timestamp"] / 1000)
    assert np.isnan(t.think_time_s).all()


def _distinct_ids(entries: list[dict]) -> set[int]:
    ids: set[int] = set()
    for e in entries:
        ids |= _distinct_ids(e["requests"]) if e.get("type") == "subagent" else set(
            e["hash_ids"])
    return ids


def test_fixture_traces_always_readable() -> None:
    t = read_trace(FIXTURES / "kvcache")
    _check_invariants(t)
    assert t.session_names == ["gen_a", "gen_b"]
    assert set(t.agent.tolist()) == {0, 1, 2}
    assert t.odd_records == {}
    # counted straight from the files: requests, and distinct ids (local to each file)
    docs = [json.loads(f.read_text()) for f in sorted((FIXTURES / "kvcache").glob("*.json"))]
    assert len(t) == sum(_count_requests(d["requests"]) for d in docs)
    assert t.num_blocks == sum(len(_distinct_ids(d["requests"])) for d in docs)
    # Mooncake: the last block is partial exactly where input_length < 512 x ids, and
    # covers the remainder (the file is in time order, so rows are in file order)
    path = FIXTURES / "mooncake_small.jsonl"
    m = read_trace(path)
    _check_invariants(m)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(m) == len(lines)
    for i, e in enumerate(lines):
        n = len(e["hash_ids"])
        assert m.last_block_partial[i] == (e["input_length"] < 512 * n)
        assert m.block_tokens(i)[-1] == e["input_length"] - (n - 1) * 512


def test_read_traces_mixes_files_and_keeps_ids_apart(tmp_path: Path) -> None:
    a = read_trace(FIXTURES / "kvcache" / "gen_a.json")
    b = read_trace(FIXTURES / "kvcache" / "gen_b.json")
    both = read_traces([FIXTURES / "kvcache" / "gen_a.json", FIXTURES / "kvcache" / "gen_b.json"])
    assert len(both) == len(a) + len(b)
    assert both.num_blocks == a.num_blocks + b.num_blocks
    # requests at equal times keep file order: gen_a's first request precedes gen_b's
    assert both.session[0] == 0 and both.arrival_s[0] == 0.0


def test_subagent_timing_on_a_written_file(tmp_path: Path) -> None:
    doc = {
        "block_size": 4, "hash_id_scope": "local",
        "requests": [
            {"t": 0.0, "in": 8, "out": 1, "hash_ids": [7, 8]},
            {"t": 10.0, "in": 9, "out": 1, "hash_ids": [7, 8]},
            {"t": 30.0, "type": "subagent", "duration_ms": 15000,
             "requests": [{"t": 0.0, "in": 4, "out": 1, "hash_ids": [7]},
                          {"t": 2.5, "in": 8, "out": 1, "hash_ids": [7, 9]}]},
            {"t": 31.0, "in": 12, "out": 1, "hash_ids": [7, 8, 10]},
        ],
    }
    p = tmp_path / "s.json"
    p.write_text(json.dumps(doc))
    t = read_trace(p)
    assert t.arrival_s.tolist() == [0.0, 10.0, 15.0, 17.5, 31.0]
    assert t.agent.tolist() == [0, 0, 1, 1, 0]
    assert t.parent_request.tolist() == [-1, -1, 1, 1, -1]
    # local ids 7..10 become dense 0..3
    assert t.blocks(4).tolist() == [0, 1, 3] and t.blocks(3).tolist() == [0, 2]


@pytest.mark.parametrize(
    "content,needle",
    [
        ('{"requests": [{"t": 0, "in": 10, "hash_ids": [1, 2]}]', "invalid JSON"),
        ('{"requests": [{"t": "x", "in": 10, "hash_ids": []}]}',
         "requests[0]: t must be a finite number"),
        ('{"requests": [{"t": 0, "in": 100, "hash_ids": [1, "a"]}]}',
         "requests[0]: hash_ids must be a list of integers, found 'a'"),
        ('{"requests": [{"t": 0, "in": 64, "hash_ids": [1, 2]}]}',
         "requests[0]: 2 hash_ids of 64 tokens exceed in=64"),
        ('{"requests": [{"t": 0, "type": "subagent", "duration_ms": 5}]}',
         "requests[0]: a subagent needs a 'requests' list"),
        ('{"requests": [{"t": 1, "in": 5, "hash_ids": []}, {"t": 2, "in": -1, "hash_ids": []}]}',
         "requests[1]: in must be an integer >= 0, got -1"),
        ('{"block_size": 0, "requests": []}', "block_size must be a positive integer"),
        ('[1, 2]', "JSON object with a 'requests' list"),
    ],
)
def test_malformed_kvcache_strict_names_file_and_entry(tmp_path: Path, content: str,
                                                       needle: str) -> None:
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(TraceFormatError) as exc:
        read_trace(p, strict=True)
    assert str(exc.value).startswith(f"{p}: ") and needle in str(exc.value)


@pytest.mark.parametrize(
    "content,kind,rows",
    [
        ('{"requests": [{"t": "x", "in": 10, "hash_ids": []}]}', "record.time_missing", 1),
        ('{"requests": [{"t": 0, "in": 100, "hash_ids": [1, "a"]}]}',
         "request.hash_ids_invalid", 1),
        ('{"requests": [{"t": 0, "in": 64, "hash_ids": [1, 2]}]}',
         "request.in_below_hash_ids", 1),
        ('{"requests": [{"t": 1, "in": 5, "hash_ids": []}, {"t": 0, "type": "subagent", '
         '"duration_ms": 5}]}', "subagent.no_requests", 1),
        ('{"requests": [{"t": 1, "in": 5, "hash_ids": []}, {"t": 2, "in": -1, "hash_ids": [1]}]}',
         "request.in_invalid", 2),
    ],
)
def test_malformed_kvcache_read_leniently_and_counted(tmp_path: Path, content: str, kind: str,
                                                      rows: int) -> None:
    p = tmp_path / "odd.json"
    p.write_text(content)
    t = read_trace(p)
    assert len(t) == rows and t.odd_records == {kind: 1}
    assert t.odd_first[kind].startswith(f"{p}: requests[")


@pytest.mark.parametrize(
    "line,needle",
    [
        ('{"timestamp": 0, "input_length": 600, "output_length": 1, "hash_ids": [1]}',
         "do not match input_length=600"),
        ('{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1, 2]}',
         "do not match"),
        ('{"timestamp": 0, "input_length": 10', "invalid JSON"),
        ('{"input_length": 10, "hash_ids": [1]}', "timestamp must be a finite number"),
    ],
)
def test_malformed_mooncake_names_file_and_line(tmp_path: Path, line: str, needle: str) -> None:
    p = tmp_path / "bad.jsonl"
    ok = '{"timestamp": 0, "input_length": 100, "output_length": 1, "hash_ids": [5]}'
    p.write_text(ok + "\n" + line + "\n")
    with pytest.raises(TraceFormatError) as exc:
        read_trace(p, strict=True)
    assert str(exc.value).startswith(f"{p}:2: ") and needle in str(exc.value)
    t = read_trace(p)  # read leniently: the odd line is counted, the good one kept
    assert sum(t.odd_records.values()) == 1
    assert all(first.startswith(f"{p}:2: ") for first in t.odd_first.values())
    assert len(t) == 1 + (needle != "invalid JSON")


def test_missing_path_and_mixed_block_sizes(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="no such trace"):
        read_trace(tmp_path / "nope.json")
    with pytest.raises(TraceFormatError, match="no kv-cache-tester trace files"):
        read_trace(tmp_path)
    with pytest.raises(TraceFormatError, match="block_size 512 differs"):
        read_traces([FIXTURES / "kvcache", FIXTURES / "mooncake_small.jsonl"])
    with pytest.raises(TraceFormatError, match="must be one of"):
        read_trace(FIXTURES / "kvcache", fmt="csv")


def test_build_trace_sorts_by_arrival_keeping_ties() -> None:
    t = build_trace("x", 4, [5.0, 1.0, 1.0], [8, 4, 8], [[10, 11], [10], [20, 21]],
                    session=[0, 1, 2])
    assert t.arrival_s.tolist() == [1.0, 1.0, 5.0]
    assert t.session.tolist() == [1, 2, 0]
    assert [t.blocks(i).tolist() for i in range(3)] == [[0], [2, 3], [0, 1]]


@pytest.mark.parametrize("ids", ["[1, 2.5]", "[true]", "[[1], [2]]", '{"a": 1}', '[1, "2"]'])
def test_hash_ids_must_be_integers(tmp_path: Path, ids: str) -> None:
    p = tmp_path / "bad.json"
    p.write_text('{"requests": [{"t": 0, "in": 1000, "hash_ids": ' + ids + "}]}")
    with pytest.raises(TraceFormatError, match=r"requests\[0\]: hash_ids must"):
        read_trace(p, strict=True)
    t = read_trace(p)  # leniently: the integers before the first bad element
    assert t.odd_records == {"request.hash_ids_invalid": 1}
    assert t.blocks_per_request.tolist() == [1 if ids.startswith("[1,") else 0]
