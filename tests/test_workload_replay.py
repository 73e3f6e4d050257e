"""Trace replay against the simulator with an unbounded cache: the replay's designed hit
rate equals the trace's own (from its hash ids), and the simulator's measured block hits
match it. Also: a 32-orchestrator coding swarm against the simulator, with its request
structure checked (shared prefix across users, growth, compaction, parallel subagents).

The sample traces in ``../shared/traces`` are used where present (skipped otherwise);
the generated traces in ``fixtures/traces`` always run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from workload_support import AGENT_TRACE, MOONCAKE_TRACE, SHARED_TRACES, own_hit_rate

from pytest_ctxplat.api import run_workload
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
