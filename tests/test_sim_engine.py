"""The simulated engine: prefix hits, scheduling, timing, preemption, determinism."""

from __future__ import annotations

import asyncio
import itertools
import statistics

import numpy as np
import pytest

from pytest_ctxplat.sim.config import SimConfig
from pytest_ctxplat.sim.engine import Engine, RequestError
from pytest_ctxplat.sim.request import EngineStoppedError, TokenEvent
from pytest_ctxplat.sim.timing import LinearTimingModel, StepWork


class VirtualClock:
    """Model time that advances only when the engine sleeps."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep(self, dt: float) -> None:
        self.t += dt
        await asyncio.sleep(0)


def _prompt(n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(x) for x in rng.integers(16, 32000, n)]


async def _run(engine: Engine, prompt: list[int], max_tokens: int) -> list[TokenEvent]:
    return [event async for event in engine.generate(prompt, max_tokens)]


def _ids(events: list[TokenEvent]) -> list[int]:
    return [t for e in events for t in e.token_ids]


@pytest.mark.asyncio
async def test_second_identical_prompt_hits_the_prefix_cache() -> None:
    engine = Engine(SimConfig(), clock=VirtualClock())
    prompt = _prompt(2000)
    try:
        first = await _run(engine, prompt, 4)
        hits_before = engine.stats.prefix_cache_hits
        second = await _run(engine, prompt, 4)
    finally:
        await engine.stop()
    assert first[0].cached_tokens == 0 and first[0].prompt_tokens == 2000
    assert second[0].cached_tokens == 1984  # (2000 - 1) // 16 * 16
    assert engine.stats.prefix_cache_hits - hits_before == 1984
    assert engine.stats.prefix_cache_queries == 4000
    assert engine.stats.prompt_tokens_cached == 1984
    assert engine.stats.prompt_tokens == 4000
    assert engine.stats.generation_tokens == 8 and engine.stats.request_success == 2
    assert _ids(first) == _ids(second)
    assert [e.num_generated for e in first][-1] == 4 and first[-1].finished


@pytest.mark.asyncio
async def test_prompt_of_whole_blocks_still_computes_its_last_token() -> None:
    engine = Engine(SimConfig(block_size=16), clock=VirtualClock())
    prompt = _prompt(64)
    try:
        await _run(engine, prompt, 1)
        again = await _run(engine, prompt, 1)
        longer = await _run(engine, [*prompt, 5000], 1)
    finally:
        await engine.stop()
    assert again[0].cached_tokens == 48  # 4 full blocks cached, only 3 may be used
    assert longer[0].cached_tokens == 64


@pytest.mark.asyncio
async def test_generated_tokens_are_cached_like_vllm_v1() -> None:
    engine = Engine(SimConfig(block_size=16), clock=VirtualClock())
    prompt = _prompt(32)
    try:
        out = _ids(await _run(engine, prompt, 40))
        follow_up = await _run(engine, [*prompt, *out, 7000, 7001], 1)
    finally:
        await engine.stop()
    # prompt 32 + 39 computed output tokens = 71 tokens in KV -> 4 full blocks
    assert follow_up[0].cached_tokens == 64


@pytest.mark.asyncio
async def test_lru_eviction_reset_and_running_requests_are_protected() -> None:
    # 16 blocks of 16 tokens; a 100-token prompt caches 6 full blocks and needs 7
    config = SimConfig(block_size=16, kv_capacity_tokens=256)
    engine = Engine(config, clock=VirtualClock())
    a, b, c = _prompt(100, 1), _prompt(100, 2), _prompt(100, 3)
    try:
        await _run(engine, a, 4)
        await _run(engine, b, 4)
        assert (await _run(engine, a, 1))[0].cached_tokens == 96  # touches a again
        assert engine.kv_evicted_blocks == 0
        await _run(engine, c, 4)  # 4 empty blocks + 3 evicted: b is least recently used
        assert engine.kv_evicted_blocks == 3
        assert (await _run(engine, a, 1))[0].cached_tokens == 96
        assert (await _run(engine, c, 1))[0].cached_tokens == 96
        assert (await _run(engine, b, 1))[0].cached_tokens == 48  # b lost its tail

        # a running request's blocks survive any amount of pressure
        held = engine.submit(a, 60)  # grows to 10 blocks
        await held.__anext__()
        evicted = engine.kv_evicted_blocks
        for seed in range(10, 16):
            await _run(engine, _prompt(80, seed), 2)  # 6 blocks each
        assert engine.kv_evicted_blocks > evicted
        assert engine.num_running == 1 and not held.finished
        assert engine.cache.lookup(held.hashes[:6]) == 6
        assert engine.reset_prefix_cache() is False  # a's blocks are in use
        held.abort()
        remaining = [e async for e in held]
        assert held.num_out < 60 and not any(e.finished for e in remaining)
        assert engine.num_running == 0 and engine.kv_cache_usage == 0.0

        assert engine.reset_prefix_cache() is True
        assert engine.cache.num_cached_blocks == 0
        assert (await _run(engine, a, 1))[0].cached_tokens == 0
    finally:
        await engine.stop()


@pytest.mark.asyncio
async def test_cache_hits_shorten_ttft_in_real_time() -> None:
    engine = Engine(SimConfig(speedup=10.0))
    prompt = _prompt(20_000)
    loop = asyncio.get_running_loop()

    async def ttft() -> float:
        start = loop.time()
        async for _ in engine.generate(prompt, 1):
            return loop.time() - start
        raise AssertionError("no token")

    try:
        cold = await ttft()
        warm = statistics.median([await ttft() for _ in range(3)])
    finally:
        await engine.stop()
    # model time: 20000 * 2.7e-5 = 0.54 s cold vs 16 * 2.7e-5 warm; / speedup 10
    assert cold >= 0.05
    assert warm < cold / 5


@pytest.mark.asyncio
async def test_ttft_and_chunked_prefill_in_model_time() -> None:
    clock = VirtualClock()
    config = SimConfig(max_num_batched_tokens=1000)
    engine = Engine(config, clock=clock)
    req = engine.submit(_prompt(2500), 1)
    try:
        events = [e async for e in req]
    finally:
        await engine.stop()
    # three chunks 1000 + 1000 + 500, no decode: 2500 * 2.7e-5
    assert engine.stats.num_steps == 3
    assert events[0].time - req.arrival_time == pytest.approx(2500 * 2.7e-5)


@pytest.mark.asyncio
async def test_load_raises_per_token_latency() -> None:
    async def itl(n_users: int) -> float:
        clock = VirtualClock()
        engine = Engine(SimConfig(), clock=clock)

        async def one(seed: int) -> list[float]:
            times = [e.time async for e in engine.generate(_prompt(1000, seed), 20)]
            return [b - a for a, b in itertools.pairwise(times[5:])]

        try:
            gaps = await asyncio.gather(*(one(s) for s in range(n_users)))
        finally:
            await engine.stop()
        return statistics.median(g for user in gaps for g in user)

    alone, loaded = await itl(1), await itl(64)
    assert alone == pytest.approx(0.0055 + 5e-5 + 1006 * 4.4e-8, rel=0.01)
    assert loaded > alone * 1.5


def test_timing_model_formula() -> None:
    model = LinearTimingModel(SimConfig(prefill_s_per_cached_token=1e-7))
    assert model.step_time(StepWork()) == 0.0
    assert model.step_time(StepWork(prefill_tokens=100, prefill_context_tokens=1000)) == (
        pytest.approx(100 * 2.7e-5 + 1000 * 1e-7)
    )
    both = StepWork(prefill_tokens=10, decode_seqs=4, decode_context_tokens=4000)
    assert model.step_time(both) == pytest.approx(10 * 2.7e-5 + 0.0055 + 4 * 5e-5 + 4000 * 4.4e-8)


@pytest.mark.asyncio
async def test_outputs_are_deterministic_per_seed_and_prompt() -> None:
    prompts = [_prompt(300, s) for s in range(4)]

    async def outputs(seed: int) -> list[list[int]]:
        engine = Engine(SimConfig(seed=seed), clock=VirtualClock())
        try:
            runs = await asyncio.gather(*(_run(engine, p, 12) for p in prompts))
        finally:
            await engine.stop()
        return [_ids(r) for r in runs]

    first, again, other = await outputs(1), await outputs(1), await outputs(2)
    assert first == again
    assert first != other
    assert all(len(o) == 12 and all(16 <= t < 32000 for t in o) for o in first)
    assert first[0] != first[1]


@pytest.mark.asyncio
async def test_max_num_seqs_bounds_the_batch() -> None:
    engine = Engine(SimConfig(max_num_seqs=3), clock=VirtualClock())
    seen: list[int] = []

    async def watch(prompt: list[int]) -> None:
        async for _ in engine.generate(prompt, 5):
            seen.append(engine.num_running)

    try:
        await asyncio.gather(*(watch(_prompt(50, s)) for s in range(8)))
    finally:
        await engine.stop()
    assert max(seen) == 3 and engine.stats.request_success == 8


@pytest.mark.asyncio
async def test_kv_pressure_preempts_and_recomputes() -> None:
    # 24 blocks; eight 64-token prompts generating 64 tokens cannot all grow at once
    config = SimConfig(block_size=16, kv_capacity_tokens=384)
    prompts = [_prompt(64, s) for s in range(8)]
    engine = Engine(config, clock=VirtualClock())
    try:
        runs = await asyncio.gather(*(_run(engine, p, 64) for p in prompts))
    finally:
        await engine.stop()
    assert engine.stats.num_preemptions > 0
    assert engine.stats.request_success == 8
    assert engine.kv_cache_usage == 0.0
    roomy = Engine(SimConfig(), clock=VirtualClock())
    try:
        reference = await asyncio.gather(*(_run(roomy, p, 64) for p in prompts))
    finally:
        await roomy.stop()
    assert roomy.stats.num_preemptions == 0
    assert [_ids(r) for r in runs] == [_ids(r) for r in reference]


@pytest.mark.asyncio
async def test_consumer_cancellation_frees_the_request() -> None:
    engine = Engine(SimConfig(speedup=20.0))
    try:
        gen = engine.generate(_prompt(500), 10_000)
        first = await gen.__anext__()
        assert first.prompt_tokens == 500 and engine.num_running == 1
        assert engine.kv_cache_usage > 0
        await gen.aclose()
        assert engine.num_running == 0 and engine.kv_cache_usage == 0.0

        async def consume() -> None:
            async for _ in engine.generate(_prompt(500, 1), 10_000):
                pass

        task = asyncio.ensure_future(consume())
        while engine.num_running == 0:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert engine.num_running == 0 and engine.num_waiting == 0
        assert engine.stats.num_aborted == 2
        await asyncio.sleep(0.01)  # the step in flight ends
        steps = engine.stats.num_steps
        await asyncio.sleep(0.05)
        assert engine.stats.num_steps == steps  # idle: no busy stepping
    finally:
        await engine.stop()


@pytest.mark.asyncio
async def test_stop_fails_unfinished_requests() -> None:
    engine = Engine(SimConfig(speedup=20.0))
    req = engine.submit(_prompt(100), 10_000)
    await req.__anext__()
    await engine.stop()
    with pytest.raises(EngineStoppedError):
        await req.__anext__()


@pytest.mark.asyncio
async def test_invalid_requests_are_rejected() -> None:
    engine = Engine(SimConfig(max_model_len=1000, kv_capacity_tokens=512), clock=VirtualClock())
    with pytest.raises(RequestError, match="at least one token"):
        engine.submit([], 4)
    with pytest.raises(RequestError, match="out of vocabulary"):
        engine.submit([1, 32000], 4)
    with pytest.raises(RequestError, match="out of vocabulary"):
        engine.submit([-1], 4)
    with pytest.raises(RequestError, match="maximum context length is 1000"):
        engine.submit(_prompt(990), 20)
    with pytest.raises(RequestError, match="KV capacity"):
        engine.submit(_prompt(600), 4)
    with pytest.raises(RequestError, match="max_tokens"):
        engine.submit([20], 0)
    assert engine.num_waiting == 0
    await engine.stop()
