"""Trace replay against the simulator with an unbounded cache: the replay's designed hit
rate equals the trace's own (from its hash ids), and the simulator's measured block hits
match it. Also: a 32-orchestrator coding swarm against the simulator, with its request
structure checked (shared prefix across users, growth, compaction, parallel subagents).

The sample traces in ``../shared/traces`` are used where present (skipped otherwise);
the generated traces in ``fixtures/traces`` always run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from workload_support import AGENT_TRACE, MOONCAKE_TRACE, SHARED_TRACES, own_hit_rate

from pytest_ctxplat.api import run_workload, simulate
from pytest_ctxplat.servers import SimServer, start_sim

WEKA = SHARED_TRACES / "weka"
MOONCAKE = SHARED_TRACES / "mooncake" / "conversation_trace.jsonl"


def _sim(block_size: int) -> Iterator[SimServer]:
    srv = start_sim({"block_size": block_size, "kv_capacity_tokens": 200_000_000,
                     "speedup": 1000.0, "max_model_len": 2_000_000})
    try:
        # the simulator's first requests are slow (imports, first allocations): at this
        # speedup that would be minutes of model time, so warm it up first
        for _ in range(3):
            httpx.post(srv.url + "/v1/completions", timeout=30.0, json={
                "prompt": list(range(100, 100 + 4 * block_size)), "max_tokens": 2})
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def sim64() -> Iterator[SimServer]:
    yield from _sim(64)


@pytest.fixture(scope="module")
def sim512() -> Iterator[SimServer]:
    yield from _sim(512)


def replay(server: SimServer, path: Path, block_size: int, first: int | None = None,
           **extra: object):
    res = run_workload(server, "trace", overrides={
        "path": str(path), "block_size": block_size, "max_idle_s": 2.0,
        "use_trace_output": False, "output_tokens": 1, "first_requests": first, **extra},
        scrape_every_s=60.0)
    assert res.metrics["errors"] == 0, res.errors_sample
    return res


def check(res, path: Path, first: int | None) -> None:
    own = own_hit_rate(path, first)
    assert res.hit_rates.designed == pytest.approx(own, abs=1e-12)
    # the simulator's counters (block hits / queried tokens) and its per-request
    # cached_tokens: every request waits for the one it builds on, so nothing it could
    # reuse is still in prefill, and an unbounded cache serves exactly the design
    assert res.hit_rates.server == pytest.approx(res.hit_rates.designed, abs=1e-9)
    assert res.hit_rates.request == pytest.approx(res.hit_rates.designed, abs=1e-9)
    assert all(r.cached_tokens == r.designed_cached_tokens for r in res.records)


def test_replay_generated_agent_trace(sim64: SimServer) -> None:
    res = replay(sim64, AGENT_TRACE, 64)
    assert res.metrics["requests"] == 24
    check(res, AGENT_TRACE, None)


def test_replay_generated_mooncake_trace(sim512: SimServer) -> None:
    res = replay(sim512, MOONCAKE_TRACE, 512, first=150)
    assert res.metrics["requests"] == 150
    check(res, MOONCAKE_TRACE, 150)


@pytest.mark.skipif(not WEKA.is_dir(), reason=f"sample traces not found at {WEKA}")
@pytest.mark.parametrize("name", ["trace_0504", "trace_0313", "trace_0291", "trace_0277",
                                  "trace_0254"])
def test_replay_sample_agent_traces(sim64: SimServer, name: str) -> None:
    path = WEKA / f"{name}.json"
    res = replay(sim64, path, 64)  # the whole trace, subagents included
    check(res, path, None)


@pytest.mark.skipif(not MOONCAKE.is_file(), reason=f"sample trace not found at {MOONCAKE}")
def test_replay_sample_mooncake_trace(sim512: SimServer) -> None:
    # the first 500 of 12,031 requests (~2.5 minutes of the hour): the simulator parses
    # about a million prompt tokens a second, so the whole hour would take minutes
    res = replay(sim512, MOONCAKE, 512, first=500)
    check(res, MOONCAKE, 500)


def test_replay_errors_name_the_fix(sim64: SimServer) -> None:
    from pytest_ctxplat.errors import ConfigError

    with pytest.raises(ConfigError, match="set block_size: 512"):
        run_workload(sim64, "trace", overrides={"path": str(MOONCAKE_TRACE)})
    with pytest.raises(ConfigError, match="use original"):
        run_workload(sim64, "trace", overrides={"path": str(MOONCAKE_TRACE), "block_size": 512,
                                                "timing": "think_time"})


def test_chat_rendering_keeps_block_boundaries_on_the_simulator(sim64: SimServer) -> None:
    res = run_workload(sim64, "coding_agent", overrides={
        "users": 4, "api": "chat", "human_turns": 2, "tool_steps_mean": 3.0,
        "think_time_median_s": 1.0, "think_time_sigma": 0.3, "tool_latency_s": 0.2,
        "initial_context_tokens": 2000, "tool_result_tokens": 500, "output_tokens": 8,
        "start_spread_s": 2.0})
    assert res.hit_rates.notes["chat.tokenize"].startswith("ok: one token per word, 1 template")
    # the simulator tokenised every message to the planned length (+1 generation token)
    assert all(r.usage_prompt_tokens == r.prompt_tokens + 1 for r in res.records)
    assert res.hit_rates.request == pytest.approx(res.hit_rates.designed, abs=0.01)


def test_chat_probe_reports_tokenizer_drift() -> None:
    import asyncio

    from pytest_ctxplat.workload.render import probe_chat_tokenizer

    def two_tokens_per_word(request: httpx.Request) -> httpx.Response:
        import json

        msgs = json.loads(request.content)["messages"]
        count = sum(3 + 2 * len(m["content"].split()) for m in msgs)
        return httpx.Response(200, json={"count": count})

    async def probe(handler):
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as c:
            return await probe_chat_tokenizer(c, "http://x", "m")

    overhead, notes = asyncio.run(probe(two_tokens_per_word))
    assert overhead == 3 and "drift: one word is 2.00 tokens" in notes["chat.tokenize"]
    _, notes = asyncio.run(probe(lambda r: httpx.Response(404)))
    assert "no /tokenize" in notes["chat.tokenize"]


def _async_trace(tmp_path: Path) -> Path:
    """Main requests at 0, 10, 15, 52; an async-launched subagent at 12.5 (its requests
    at 12.5 and 42.5) and a blocking one that ended at 50 after 30 s (at 20 and 40)."""
    import json

    def r(t: float, ids: list[int], think: float = 0.0) -> dict[str, object]:
        return {"t": t, "type": "n", "in": 64 * len(ids) + 5, "out": 10, "hash_ids": ids,
                "api_time": 2.0, "think_time": think}

    doc = {"id": "s", "block_size": 64, "hash_id_scope": "local", "requests": [
        r(0, [1, 2]), r(10, [1, 2, 3], 8),
        {"t": 12.5, "type": "subagent", "agent_id": "a", "status": "async_launched",
         "duration_ms": None, "total_tokens": None, "tool_use_count": None,
         "requests": [r(0, [1, 50]), r(30, [1, 50, 51], 28)]},
        r(15, [1, 2, 3, 4], 3),
        {"t": 50, "type": "subagent", "agent_id": "b", "status": "completed",
         "duration_ms": 30000, "requests": [r(0, [1, 60]), r(20, [1, 60, 61], 18)]},
        r(52, [1, 2, 3, 4, 5], 2)]}
    p = tmp_path / "async.json"
    p.write_text(json.dumps(doc))
    return p


def test_async_subagents_replay_at_their_marker_in_original_timing(tmp_path: Path) -> None:
    from pytest_ctxplat.workload import load_workload
    from pytest_ctxplat.workload.spec import WorkloadContext

    spec = load_workload("trace", {"path": str(_async_trace(tmp_path)), "block_size": 64})
    timed = list(spec.timed_requests(WorkloadContext(seed=0)) or [])
    sent = {(r.session_id, r.index): r.t_s for r in timed}
    assert sent == {("s", 0): 0.0, ("s", 1): 10.0, ("s/a1", 0): 12.5, ("s", 2): 15.0,
                    ("s/a2", 0): 20.0, ("s/a2", 1): 40.0, ("s/a1", 1): 42.5, ("s", 3): 52.0}
    # the parent's next request builds on its own previous one, not on the subagent
    by_key = {(r.session_id, r.index): i for i, r in enumerate(timed)}
    assert timed[by_key[("s", 2)]].wait_for == by_key[("s", 1)]
    res = simulate("trace", "h100-llama8b", overrides={
        "path": str(tmp_path / "async.json"), "block_size": 64})
    starts = {(r.session_id, r.index): r.start_s for r in res.records}
    assert starts[("s/a1", 0)] == pytest.approx(12.5) and starts[("s/a2", 0)] == pytest.approx(20)


def test_async_subagents_do_not_hold_up_the_parent_in_think_time_timing(
        tmp_path: Path) -> None:
    from pytest_ctxplat.workload import load_workload
    from pytest_ctxplat.workload.model import SpawnStep
    from pytest_ctxplat.workload.plan import plan_workload

    spec = load_workload("trace", {"path": str(_async_trace(tmp_path)), "block_size": 64,
                                   "timing": "think_time"})
    # ttft 0.5 s + 10 tokens at 50/s: every request takes 0.7 s
    plan = plan_workload(spec)
    at: dict[str, list[float]] = {}
    for sid, t in zip(plan.session_id, plan.t_s.tolist(), strict=True):
        at.setdefault(sid, []).append(round(t, 6))
    # the async subagent starts when the request it followed ends (0.7 + 8 + 0.7); the
    # parent goes on 3 s later without waiting, then waits for the blocking subagent
    assert at["s/a1"] == pytest.approx([9.4, 9.4 + 0.7 + 28])
    assert at["s"] == pytest.approx([0.0, 8.7, 12.4, 13.1 + 0.7 + 18 + 0.7 + 2])
    assert at["s/a2"] == pytest.approx([13.1, 13.1 + 0.7 + 18])
    # in the session plan: the async spawn waits for its subagent *and* the rest of the
    # parent (so the session lasts until both end); the blocking spawn just waits
    from pytest_ctxplat.workload.spec import WorkloadContext

    (session,) = spec.user_sessions(0, WorkloadContext(seed=0))
    steps = list(session.steps)
    assert [type(s).__name__ for s in steps] == ["RequestPlan", "RequestPlan", "SpawnStep"]
    join = steps[-1]
    assert isinstance(join, SpawnStep) and join.wait
    assert [c.session_id for c in join.children] == ["s/a1", "s"]
    # against the simulator every request is played, at the same step numbers
    res = simulate(spec, "h100-llama8b")
    got = sorted((r.session_id, r.index) for r in res.records)
    assert got == [("s", 0), ("s", 1), ("s", 3), ("s", 5), ("s/a1", 0), ("s/a1", 1),
                   ("s/a2", 0), ("s/a2", 1)]
    first = {k: r.start_s for r in res.records if (k := (r.session_id, r.index))}
    assert first[("s", 3)] < first[("s/a1", 1)]  # the parent did not wait for a1
    ends = [r.end_s or 0.0 for r in res.records if r.session_id == "s/a2"]
    assert first[("s", 5)] >= max(ends)  # but did wait for the blocking a2


@pytest.mark.parametrize("bad", ["t" * 300 + ".json", "a\x00b.json", "d/" * 3000 + "x"])
def test_a_path_the_file_system_refuses_is_a_config_error(bad: str, tmp_path: Path) -> None:
    """A name too long for the file system, or with a NUL, is "does not exist" naming the
    file and key, from a marker override and from a definition file alike."""
    from pytest_ctxplat.errors import ConfigError
    from pytest_ctxplat.workload.loader import load_workload

    with pytest.raises(ConfigError, match=r"path: .* does not exist"):
        load_workload("trace", {"path": bad})
    (tmp_path / "mine.yaml").write_text(f"kind: trace\npath: {json.dumps(bad)}\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml:2: path: .* does not exist"):
        load_workload("mine", dirs=[tmp_path])
