"""KV tiers below HBM: cascade, slow writes (drop / stall), TTL, loads, metrics."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_ctxplat.servers.scrape import parse_metrics
from pytest_ctxplat.sim.config import SimConfig
from pytest_ctxplat.sim.engine import Engine
from pytest_ctxplat.sim.hardware import TierSpec, load_hardware
from pytest_ctxplat.sim.metrics import SimMetrics
from pytest_ctxplat.sim.tiers import TierChain
from pytest_ctxplat.sim.timing import StepWork
from pytest_ctxplat.sim.virtual import run_virtual

MB = 1_000_000


def _chain(policy: str = "drop", dram_blocks: int = 2, write_gbs: float = 1.0,
           ttl: float | None = None) -> TierChain:
    specs = [TierSpec(name="dram", capacity_tokens=16 * dram_blocks, read_gbs=1.0,
                      write_gbs=write_gbs, write_queue_s=0.0, ttl_s=ttl),
             TierSpec(name="nvme", capacity_tokens=16 * 100, read_gbs=1.0, write_gbs=100.0,
                      write_queue_s=0.0)]
    return TierChain(specs, block_size=16, block_bytes=MB, write_policy=policy)


def test_eviction_cascades_and_copies_stay_inclusive() -> None:
    chain = _chain(write_gbs=100.0)
    end = chain.demote([1, 2, 3, 4], now=0.0, step_s=1.0)
    assert end == 1.0
    dram, nvme = chain.tiers
    assert 3 in dram and 4 in dram and 1 in nvme and 2 in nvme and 1 not in dram
    assert chain.transfer_bytes == {"GPU_to_CPU": 4 * MB, "CPU_to_NVME": 2 * MB}
    assert chain.find([3, 4, 1, 9, 2], 0) == [0, 0, 1]  # stops at the first miss
    chain.demote([3], now=2.0, step_s=1.0)  # already in DRAM: touched, not written again
    assert dram.counters.writes == 4 - 0 and chain.transfer_bytes["GPU_to_CPU"] == 4 * MB


def test_slow_writes_drop_or_stall() -> None:
    # 1 MB blocks at 1 GB/s: 1 ms per block; a 1 ms step has room for one write
    drop = _chain("drop", dram_blocks=10)
    assert drop.demote([1, 2, 3, 4], now=0.0, step_s=0.001) == pytest.approx(0.001)
    assert drop.tiers[0].counters.writes == 1 and drop.tiers[0].counters.drops == 3
    assert drop.lost.take(4) and not drop.lost.take(1)
    stall = _chain("stall", dram_blocks=10)
    assert stall.demote([1, 2, 3, 4], now=0.0, step_s=0.001) == pytest.approx(0.004)
    assert stall.tiers[0].counters.drops == 0 and len(stall.tiers[0]) == 4


def test_ttl_moves_blocks_down_then_out() -> None:
    chain = _chain(write_gbs=100.0, dram_blocks=10, ttl=60.0)
    chain.demote([1, 2], now=0.0, step_s=1.0)
    chain.expire(30.0)
    assert 1 in chain.tiers[0]
    chain.expire(61.0)
    assert 1 not in chain.tiers[0] and 1 in chain.tiers[1]
    assert chain.tiers[0].counters.expirations == 2


def _prompt(n: int, seed: int) -> list[int]:
    return [int(x) for x in np.random.default_rng(seed).integers(16, 32000, n)]


def test_lower_tier_hit_costs_its_load_time_and_is_counted() -> None:
    profile = load_hardware("h100-llama8b-dram", {
        "tiers.0.capacity_tokens": 4096, "tiers.1.read_gbs": 1.0,
        "tiers.1.latency_s": 0.01})
    a, b = _prompt(3000, 1), _prompt(3000, 2)

    async def scenario() -> tuple[list[float], Engine]:
        engine = Engine(SimConfig(), profile=profile)
        ttfts = []
        try:
            for prompt in (a, b, a):
                t0 = engine.clock.now()
                events = [e async for e in engine.generate(prompt, 2)]
                first = events[0]
                ttfts.append(first.time - t0)
                last = events[-1]
        finally:
            await engine.stop()
        assert last.cached_tokens == 2992  # whole blocks of a, from DRAM
        return ttfts, engine

    ttfts, engine = run_virtual(scenario())
    snap = parse_metrics(SimMetrics(engine).render().decode())
    from_dram = snap.get("ctxplat_sim:tier_hit_blocks_total{tier=dram}")
    assert 100 < from_dram <= 187
    load_s = from_dram * 16 * 131072 / 1e9 + 0.01  # bytes / read bandwidth + latency
    step = engine.timing.step_time(StepWork(prefill_tokens=8, prefill_context_tokens=2992,
                                            prefill_attention_pairs=8 * (2992 + 4.5)))
    assert ttfts[2] == pytest.approx(load_s + step, rel=0.01)
    assert ttfts[2] > 5 * ttfts[0] / 10 and ttfts[2] > load_s
    s = engine.stats
    assert s.external_hits == from_dram * 16 == s.tokens_external
    assert s.tokens_local_compute == 3000 + 3000 + 8
    assert snap.get("vllm:external_prefix_cache_hits_total") == from_dram * 16
    assert snap.get("vllm:external_prefix_cache_queries_total") == 9000
    assert snap.get("vllm:prompt_tokens_by_source_total{source=external_kv_transfer}") == \
        from_dram * 16
    assert snap.get("vllm:prompt_tokens_by_source_total{source=local_cache_hit}") == \
        2992 - from_dram * 16
    assert snap.get("vllm:kv_offload_total_bytes_total{transfer_type=CPU_to_GPU}") == \
        from_dram * 16 * 131072
    assert snap.get("vllm:kv_offload_total_bytes_total{transfer_type=GPU_to_CPU}") > 0
    assert snap.has("ctxplat_sim:tier_dropped_blocks_total{tier=dram}")
    assert snap.has("vllm:num_preemptions_total")


def test_without_tiers_no_external_metrics_and_refills_counted() -> None:
    profile = load_hardware("h100-llama8b", {"tiers.0.capacity_tokens": 4096})
    a, b = _prompt(3000, 1), _prompt(3000, 2)

    async def scenario() -> Engine:
        engine = Engine(SimConfig(), profile=profile)
        try:
            for prompt in (a, b, a):
                [e async for e in engine.generate(prompt, 2)]
        finally:
            await engine.stop()
        return engine

    engine = run_virtual(scenario())
    snap = parse_metrics(SimMetrics(engine).render().decode())
    assert not snap.has("vllm:external_prefix_cache_hits_total")
    assert snap.get("ctxplat_sim:kv_refill_blocks_total") > 100  # a computed twice
    local = snap.get("vllm:prompt_tokens_by_source_total{source=local_compute}")
    hit = snap.get("vllm:prompt_tokens_by_source_total{source=local_cache_hit}")
    assert local + hit == 9000 and hit == snap.get("vllm:prefix_cache_hits_total")
