"""Workload model: prompt synthesis, session structure, designed hit rate, spec errors."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from pytest_ctxplat.errors import ConfigError
from pytest_ctxplat.workload import (
    BlockIdAllocator,
    DesignedCache,
    RequestPlan,
    SessionStream,
    TokenSpace,
    WorkloadContext,
    load_workload,
)


def test_same_block_ids_render_same_tokens_and_prefixes_match() -> None:
    ts = TokenSpace(16, seed=3)
    a = ts.tokens([5, 6, 7], tail_id=8, tail_len=4)
    b = ts.tokens([5, 6, 7, 8])
    assert len(a) == 52 and len(b) == 64
    assert (a == b[:52]).all()
    c = ts.tokens([5, 9])
    assert (c[:16] == a[:16]).all() and not (c[16:32] == a[16:32]).all()
    assert a.min() >= 100 and a.max() < 4096


def test_seed_changes_every_token() -> None:
    a = TokenSpace(16, seed=1).tokens([1, 2, 3])
    b = TokenSpace(16, seed=2).tokens([1, 2, 3])
    assert (a != b).mean() > 0.9


def test_chat_sessions_share_system_prefix_and_grow() -> None:
    wl = load_workload("chat", {"users": 3, "turns": 4, "system_prompt_tokens": 1000,
                                "user_tokens": 100, "output_tokens": 50, "block_size": 64})
    ctx = WorkloadContext(seed=1)
    sessions = [list(s.steps) for u in range(3) for s in wl.user_sessions(u, ctx)]
    assert [len(s) for s in sessions] == [4, 4, 4]
    shared = 1000 // 64
    firsts = [s[0] for s in sessions]
    for f in firsts[1:]:
        assert (f.blocks[:shared] == firsts[0].blocks[:shared]).all()
        assert f.blocks[shared] != firsts[0].blocks[shared]  # own content after the prefix
    for s in sessions:
        lengths = [r.prompt_tokens for r in s]
        assert lengths == [1100, 1250, 1400, 1550]
        for prev, cur in itertools.pairwise(s):
            assert (cur.blocks[: len(prev.blocks)] == prev.blocks).all()


def test_recycle_needs_a_bound() -> None:
    with pytest.raises(ConfigError, match="duration_s or max_requests"):
        load_workload("chat", {"recycle": True})


def test_unknown_key_names_valid_keys() -> None:
    with pytest.raises(ConfigError, match=r"^t::x: user: unknown key; valid: .*users"):
        load_workload("chat", {"user": 3}, where="t::x")


def test_yaml_errors_name_file_and_line(tmp_path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("kind: chat\nusers: 2\nturnz: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:3: turnz: unknown key; valid: "):
        load_workload(str(p))
    p.write_text("kind: chat\nusers: two\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2: users: must be an integer, got 'two'"):
        load_workload(str(p))
    p.write_text("kind: nope\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:1: kind: unknown kind 'nope'; valid: "
                                          r"chat, coding_agent"):
        load_workload(str(p))
    p.write_text("kind: chat\nusers: 2\nusers: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:3: invalid YAML: duplicate key 'users' "
                                          r"\(first at line 2\)"):
        load_workload(str(p))
    with pytest.raises(ConfigError, match=r"^file not found: .*missing.yaml"):
        load_workload(str(tmp_path / "missing.yaml"))


def test_definition_found_by_name_in_dir(tmp_path) -> None:
    (tmp_path / "mine.yaml").write_text("kind: chat\nusers: 7\n")
    wl = load_workload("mine", {"turns": 2}, dirs=[tmp_path])
    assert (wl.users, wl.turns) == (7, 2)


def _brute_force_designed(plans: list[RequestPlan], sbs: int, ts: TokenSpace) -> list[int]:
    """Reference: longest common token prefix with any earlier prompt, floored to whole
    server blocks and capped at the last token."""
    seen: list[np.ndarray] = []
    out = []
    for p in plans:
        toks = ts.tokens(p.blocks, p.tail_id, p.tail_len)
        best = 0
        for s in seen:
            n = min(len(s), len(toks))
            neq = np.nonzero(s[:n] != toks[:n])[0]
            best = max(best, int(neq[0]) if len(neq) else n)
        seen.append(toks)
        cap = ((len(toks) - 1) // sbs) * sbs
        out.append(max(0, min(best // sbs * sbs, cap)))
    return out


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("sbs", [1, 16, 64, 128])
def test_designed_cache_matches_brute_force(seed: int, sbs: int) -> None:
    rng = random.Random(seed)
    bs = 64
    ids = BlockIdAllocator()
    shared = ids.take(rng.randint(0, 5))
    streams = [SessionStream.start(bs, ids, shared) for _ in range(4)]
    plans = []
    for _ in range(30):
        s = rng.choice(streams)
        s.extend(rng.randint(1, 300))
        plans.append(s.request(8))
    ts = TokenSpace(bs, seed=seed)
    dc = DesignedCache(sbs)
    assert [dc.observe(p) for p in plans] == _brute_force_designed(plans, sbs, ts)
