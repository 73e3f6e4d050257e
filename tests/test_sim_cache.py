"""The simulator's KV block cache: hashing, hits, LRU eviction, reference counts."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from pytest_ctxplat.errors import ConfigError, SimulatorError
from pytest_ctxplat.sim.cache import PrefixCache, block_hashes
from pytest_ctxplat.sim.config import SimConfig


def _tokens(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(16, 32000, n).astype(np.int64)


def _fill(cache: PrefixCache, hashes: list[int]) -> list[int]:
    """Allocate and register blocks for ``hashes`` as one request; returns block ids."""
    blocks = cache.allocate(len(hashes))
    assert blocks is not None
    for b, h in zip(blocks, hashes, strict=True):
        assert cache.cache_block(b, h)
    return blocks


def test_hashes_are_chained_full_blocks_only() -> None:
    t = _tokens(100)
    h = block_hashes(t, 16)
    assert len(h) == 6  # 100 // 16, the partial tail is not hashed
    assert block_hashes(t[:96], 16) == h
    assert block_hashes(t[:40], 16) == h[:2]  # a prefix has the same leading hashes
    changed = t.copy()
    changed[3] += 1  # a change in block 0 changes every later (chained) hash
    h2 = block_hashes(changed, 16)
    assert all(a != b for a, b in zip(h, h2, strict=True))
    later = t.copy()
    later[50] += 1  # a change in block 3 keeps blocks 0..2
    h3 = block_hashes(later, 16)
    assert h3[:3] == h[:3] and all(a != b for a, b in zip(h[3:], h3[3:], strict=True))
    swapped = t.copy()
    swapped[0], swapped[1] = t[1], t[0]  # order inside a block matters
    assert block_hashes(swapped, 16)[0] != h[0] or t[0] == t[1]
    assert len(set(block_hashes(_tokens(50_000), 16))) == 50_000 // 16


def test_same_block_content_at_another_position_hashes_differently() -> None:
    block = _tokens(16)
    twice = np.concatenate([block, block])
    h = block_hashes(twice, 16)
    assert h[0] != h[1]


def test_hash_and_lookup_of_100k_tokens_is_fast() -> None:
    t = _tokens(100_000)
    cache = PrefixCache(10_000, 16)
    h = block_hashes(t, 16)
    _fill(cache, h)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        n = cache.lookup(block_hashes(t, 16))
        best = min(best, time.perf_counter() - start)
    assert n == 6250
    assert best < 0.010


def test_lookup_counts_leading_hits_only() -> None:
    cache = PrefixCache(100, 16)
    h = block_hashes(_tokens(160), 16)
    _fill(cache, h[:4])
    assert cache.lookup(h) == 4
    assert cache.lookup(h[1:]) == 3  # lookup is by hash, not position
    assert cache.lookup(block_hashes(_tokens(160, seed=9), 16)) == 0


def test_lru_evicts_oldest_freed_blocks_first_and_tail_before_head() -> None:
    cache = PrefixCache(8, 16)
    old = block_hashes(_tokens(64, 1), 16)  # 4 blocks
    new = block_hashes(_tokens(64, 2), 16)  # 4 blocks
    b_old = _fill(cache, old)
    b_new = _fill(cache, new)
    assert cache.num_free_blocks == 0 and cache.usage == 1.0
    cache.free(b_old)
    cache.free(b_new)
    assert cache.usage == 0.0 and cache.num_cached_blocks == 8
    # two new blocks evict the two *tail* blocks of the oldest request
    got = cache.allocate(2)
    assert got is not None and sorted(got) == sorted(b_old[2:])
    assert cache.lookup(old) == 2
    assert cache.lookup(new) == 4
    assert cache.counters.evicted_blocks == 2
    # two more take the rest of the old request; the newer one stays cached
    assert cache.allocate(2) is not None
    assert cache.lookup(old) == 0 and cache.lookup(new) == 4


def test_referenced_blocks_are_never_evicted() -> None:
    cache = PrefixCache(6, 16)
    held = block_hashes(_tokens(64, 1), 16)
    blocks = _fill(cache, held)  # 4 blocks held by a "running" request
    assert cache.allocate(3) is None  # only 2 free: nothing changes
    assert cache.num_free_blocks == 2
    other = cache.allocate(2)
    assert other is not None
    assert cache.allocate(1) is None
    assert cache.lookup(held) == 4
    cache.free(other)
    cache.free(blocks)
    assert cache.num_free_blocks == 6


def test_acquiring_a_cached_block_protects_it() -> None:
    cache = PrefixCache(4, 16)
    h = block_hashes(_tokens(64, 3), 16)
    cache.free(_fill(cache, h))
    pinned = cache.acquire(h[:2])
    assert [cache.refcount(b) for b in pinned] == [1, 1]
    assert cache.num_evictable_among(h) == 2
    assert cache.allocate(2) is not None
    assert cache.allocate(1) is None
    assert cache.lookup(h) == 2  # the pinned head survived


def test_reset_drops_unreferenced_blocks() -> None:
    cache = PrefixCache(16, 16)
    a = block_hashes(_tokens(64, 1), 16)
    b = block_hashes(_tokens(64, 2), 16)
    cache.free(_fill(cache, a))
    held = _fill(cache, b)
    assert cache.reset() is False  # b is still referenced
    assert cache.lookup(a) == 0 and cache.lookup(b) == 4
    cache.free(held)
    assert cache.reset() is True
    assert cache.lookup(b) == 0 and cache.num_cached_blocks == 0
    assert cache.num_free_blocks == 16


def test_duplicate_hash_is_not_registered_twice() -> None:
    cache = PrefixCache(8, 16)
    h = block_hashes(_tokens(32, 4), 16)
    first = _fill(cache, h)
    second = cache.allocate(2)
    assert second is not None
    assert cache.cache_block(second[0], h[0]) is False
    cache.free(second)
    assert cache.num_cached_blocks == 2 and cache.lookup(h) == 2
    cache.free(first)
    assert cache.num_free_blocks == 8


def test_double_free_is_an_error() -> None:
    cache = PrefixCache(2, 16)
    blocks = cache.allocate(1)
    assert blocks is not None
    cache.free(blocks)
    with pytest.raises(SimulatorError, match="freed more often than allocated"):
        cache.free(blocks)


def test_config_validation_names_field_and_range() -> None:
    with pytest.raises(ConfigError, match=r"block_size: must be >= 1, got 0"):
        SimConfig(block_size=0)
    with pytest.raises(ConfigError, match=r"speedup: must be > 0, got 0"):
        SimConfig(speedup=0)
    with pytest.raises(ConfigError, match=r"speedup: must be finite, got inf"):
        SimConfig(speedup=float("inf"))
    with pytest.raises(ConfigError, match=r"decode_step_base_s: must be >= 0"):
        SimConfig(decode_step_base_s=-1.0)
    with pytest.raises(ConfigError, match="kv_capacity_tokens: must be >= block_size"):
        SimConfig(block_size=64, kv_capacity_tokens=32)
    with pytest.raises(ConfigError, match=r"x\.yaml: blocksize: unknown key; valid: .*block_size"):
        SimConfig.from_mapping({"blocksize": 8}, source="x.yaml")
    with pytest.raises(ConfigError, match=r"x\.yaml: seed: must be >= 0, got -1"):
        SimConfig.from_mapping({"seed": -1}, source="x.yaml")
    cfg = SimConfig.from_mapping({"block_size": 32, "speedup": 5}, source="x")
    assert cfg.block_size == 32 and cfg.num_kv_blocks == 400_000 // 32
    with pytest.raises(TypeError):
        SimConfig(16)  # type: ignore[misc]


def test_config_from_yaml(tmp_path: Path) -> None:
    good = tmp_path / "sim.yaml"
    good.write_text("block_size: 8\nkv_capacity_tokens: 1024\nmodel: tiny\n")
    cfg = SimConfig.from_yaml(good)
    assert (cfg.block_size, cfg.num_kv_blocks, cfg.model) == (8, 128, "tiny")
    bad = tmp_path / "bad.yaml"
    bad.write_text("speedup: fast\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:1: speedup: must be a number, got 'fast'"):
        SimConfig.from_yaml(bad)
    with pytest.raises(ConfigError, match=r"file not found: .*missing\.yaml"):
        SimConfig.from_yaml(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert SimConfig.from_yaml(empty) == SimConfig()
