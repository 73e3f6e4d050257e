"""Agentic kinds, working-set kinds, load-shape specs and designed-cache variants,
checked on plans (no server)."""

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
from pytest_ctxplat.workload.load import LoadShape, Stage, TokenBudget
from pytest_ctxplat.workload.model import SpawnStep
from pytest_ctxplat.workload.plan import plan_workload
from pytest_ctxplat.workload.render import render_messages

SMALL = {"users": 6, "human_turns": 3, "tool_steps_mean": 4.0, "initial_context_tokens": 2000,
         "tool_result_tokens": 800, "context_limit_tokens": 20000, "summary_tokens": 1000,
         "think_time_median_s": 5.0, "think_time_sigma": 1.0, "block_size": 64}


def _flatten(steps, sid, out):
    """Requests of a session in walk order, children (depth-first) after their spawn."""
    for step in steps:
        if isinstance(step, SpawnStep):
            out.append(("spawn", sid, step))
            for c in step.children:
                _flatten(c.steps, c.session_id, out)
        else:
            out.append(("req", sid, step))
    return out


def test_coding_agent_shares_prefix_grows_and_compacts() -> None:
    wl = load_workload("coding_agent", SMALL)
    ctx = WorkloadContext(seed=3)
    shared = wl.shared_tokens // wl.block_size
    sessions = [list(s.steps) for u in range(wl.users) for s in wl.user_sessions(u, ctx)]
    firsts = [s[0] for s in sessions]
    for f in firsts[1:]:  # system prompt + tools: the same ids for every user
        assert (f.blocks[:shared] == firsts[0].blocks[:shared]).all()
        assert f.blocks[shared] != firsts[0].blocks[shared]
    compactions = 0
    for s in sessions:
        for prev, cur in itertools.pairwise(s):
            if prev.kind == "compact":
                compactions += 1
                # a summary replaces the history: same shared prefix, new ids after it
                assert (cur.blocks[:shared] == prev.blocks[:shared]).all()
                assert cur.blocks[shared] not in set(prev.blocks.tolist())
                assert cur.prompt_tokens < prev.prompt_tokens
                assert prev.prompt_tokens >= wl.context_limit_tokens
            else:  # growth: the whole previous prompt is re-sent, plus new tokens
                assert cur.prompt_tokens > prev.prompt_tokens
                assert (cur.blocks[: len(prev.blocks)] == prev.blocks).all()
    assert compactions >= 2
    assert max(r.prompt_tokens for s in sessions for r in s) < wl.context_limit_tokens + 10_000


def test_coding_agent_is_seeded_and_has_long_tailed_gaps() -> None:
    def prompts(seed: int) -> list[int]:
        p = plan_workload(load_workload("coding_agent", {**SMALL, "users": 3}), seed=seed)
        return [r.prompt_tokens for r in p.requests]

    assert prompts(1) == prompts(1) and prompts(1) != prompts(2)
    wl = load_workload("coding_agent", {"users": 100, "recycle": True, "duration_s": 36000})
    p = plan_workload(wl)
    last: dict[str, float] = {}
    gaps = []
    for t, sid in zip(p.t_s.tolist(), p.session_id, strict=True):
        if sid in last:
            gaps.append(t - last[sid])
        last[sid] = t
    g = np.array(gaps)
    # REFERENCE section 2: median gap ~18 s, mean ~150 s, tail to hours
    assert 8 < np.median(g) < 30
    assert 80 < g.mean() < 250
    assert 0.02 < (g > 300).mean() < 0.1
    assert 0.001 < (g > 3600).mean() < 0.02


def test_swarm_spawns_parallel_subagents_from_the_shared_prefix() -> None:
    wl = load_workload("coding_swarm", {**SMALL, "spawn_probability": 0.5, "subagents_max": 3})
    ctx = WorkloadContext(seed=5)
    shared = wl.shared_tokens // wl.block_size
    walk: list = []
    for u in range(wl.users):
        for s in wl.user_sessions(u, ctx):
            _flatten(s.steps, s.session_id, walk)
    spawns = [w[2] for w in walk if w[0] == "spawn"]
    assert spawns and max(len(s.children) for s in spawns) >= 2
    assert all(s.wait for s in spawns)
    main_first = next(w[2] for w in walk if w[0] == "req")
    child_reqs = [w for w in walk if w[0] == "req" and "-a" in w[1]]
    assert child_reqs
    by_child: dict[str, list[RequestPlan]] = {}
    for _, sid, r in child_reqs:
        by_child.setdefault(sid, []).append(r)
    for reqs in by_child.values():
        first = reqs[0]
        assert (first.blocks[:shared] == main_first.blocks[:shared]).all()
        task = first.prompt_tokens - wl.shared_tokens
        assert task == wl.subagent_task_tokens
        for prev, cur in itertools.pairwise(reqs):
            assert (cur.blocks[: len(prev.blocks)] == prev.blocks).all()


def test_persistent_subagents_keep_their_context() -> None:
    wl = load_workload("coding_swarm", {**SMALL, "spawn_probability": 0.6, "subagents_max": 1,
                                        "persistent_subagents": True, "users": 2})
    ctx = WorkloadContext(seed=2)
    walk: list = []
    for s in wl.user_sessions(0, ctx):
        _flatten(s.steps, s.session_id, walk)
    reqs = [r for kind, sid, r in walk if kind == "req" and sid.endswith("-p0")]
    spawns = [w for w in walk if w[0] == "spawn"]
    assert len(spawns) >= 2
    for prev, cur in itertools.pairwise(reqs):  # one slot: each task appends to it
        assert (cur.blocks[: len(prev.blocks)] == prev.blocks).all()


def test_chat_rendering_keeps_message_structure_and_length() -> None:
    wl = load_workload("coding_agent", {**SMALL, "users": 1, "api": "chat"})
    ctx = WorkloadContext(seed=1)
    reqs = [r for s in wl.user_sessions(0, ctx) for r in s.steps]
    ts = TokenSpace(wl.block_size)
    r = reqs[3]
    tokens = ts.tokens(r.blocks, r.tail_id, r.tail_len)
    for overhead in (0, 1, 3):
        msgs = render_messages(r, tokens, overhead)
        words = sum(len(m["content"].split()) for m in msgs)
        assert words + overhead * len(msgs) == r.prompt_tokens
    msgs = render_messages(r, tokens, 1)
    roles = [m["role"] for m in msgs]
    assert roles[:2] == ["system", "user"] and "tool" in roles
    call = next(m for m in msgs if m.get("tool_calls"))
    result = msgs[msgs.index(call) + 1]
    assert result["role"] == "tool" and result["tool_call_id"] == call["tool_calls"][0]["id"]
    # an earlier request's messages are a prefix of a later one's
    r2 = reqs[4]
    msgs2 = render_messages(r2, ts.tokens(r2.blocks, r2.tail_id, r2.tail_len), 1)
    assert msgs2[: len(msgs)] == msgs


def test_target_cache_rate_designed_rate_approaches_target() -> None:
    for rate in (0.0, 0.5, 0.9):
        wl = load_workload("target_cache_rate", {
            "users": 4, "working_set_tokens": 40_000, "prompt_tokens": 4096,
            "cache_rate": rate, "requests_per_user": 100})
        p = plan_workload(wl)
        warm = p.designed_tokens()[40:].sum() / p.prompt_tokens[40:].sum()
        assert warm == pytest.approx(rate, abs=0.02)


def test_working_set_round_robin_is_deterministic_and_growth_adds_prefixes() -> None:
    wl = load_workload("target_cache_rate", {"users": 2, "working_set_tokens": 16_384,
                                             "prompt_tokens": 4096, "cache_rate": 0.5,
                                             "requests_per_user": 8})
    ctx = WorkloadContext(seed=0)
    firsts = [int(next(iter(s.steps)).blocks[0]) for s in wl.user_sessions(0, ctx)]
    others = [int(next(iter(s.steps)).blocks[0]) for s in wl.user_sessions(1, ctx)]
    # 8 prefixes of 2048 tokens; users interleave: user 0 takes 0, 2, 4, 6, 0, ...
    assert firsts == firsts[:4] * 2 and others == others[:4] * 2
    assert len({*firsts, *others}) == 8
    g = load_workload("growing_working_set", {
        "users": 1, "working_set_tokens": 8192, "max_working_set_tokens": 200_000,
        "growth_tokens_per_request": 4096, "prompt_tokens": 4096, "cache_rate": 0.5,
        "requests_per_user": 200})
    assert g.set_size(0) == 4 and g.set_size(10) == 24 and g.set_size(10_000) == 97
    g = load_workload("growing_working_set", {
        "users": 1, "working_set_tokens": 8192, "max_working_set_tokens": 400_000,
        "growth_tokens_per_request": 1024, "prompt_tokens": 4096, "cache_rate": 0.5,
        "requests_per_user": 300})
    p = plan_workload(g)
    firsts = [int(r.blocks[0]) for r in p.requests]
    assert len(set(firsts[-100:])) > 1.5 * len(set(firsts[:100]))
    # a 100k-token cache holds the early set but not the grown one
    d = p.designed_tokens(capacity_tokens=100_000) / p.prompt_tokens
    assert d[:100].mean() > 0.25 and d[-100:].mean() < 0.15


def test_single_prompt_cold_then_warm_at_doubling_sizes() -> None:
    wl = load_workload("single_prompt", {"min_tokens": 1000, "max_tokens": 8000})
    p = plan_workload(wl)
    assert [r.prompt_tokens for r in p.requests] == [1000, 1000, 2000, 2000, 4000, 4000,
                                                     8000, 8000]
    d = p.designed_tokens(server_block_size=16).tolist()
    assert d[0::2] == [0, 0, 0, 0]
    assert d[1::2] == [992, 1984, 3984, 7984]


def _ttl_reference(plans, times, ttl, sbs):
    last: dict[int, float] = {}
    out = []
    for p, t in zip(plans, times, strict=True):
        k = 0
        while k < len(p.blocks) and last.get(int(p.blocks[k]), -1e18) >= t - ttl:
            k += 1
        tok = k * p.block_size
        cap = ((p.prompt_tokens - 1) // sbs) * sbs
        out.append(max(0, min(tok // sbs * sbs, cap)))
        for b in p.blocks.tolist():
            last[b] = t
        if p.tail_len:
            last.setdefault(p.tail_id, -1e18)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_designed_ttl_matches_reference_and_capacity_is_monotone(seed: int) -> None:
    rng = random.Random(seed)
    bs = 64
    ids = BlockIdAllocator()
    shared = ids.take(3)
    streams = [SessionStream.start(bs, ids, shared) for _ in range(5)]
    plans, times = [], []
    t = 0.0
    for _ in range(60):
        s = rng.choice(streams)
        s.extend(rng.randint(64, 400))
        plans.append(s.request(8))
        t += rng.expovariate(1 / 20)
        times.append(t)
    for ttl in (5.0, 30.0, 300.0):
        dc = DesignedCache(bs, ttl_s=ttl)
        assert [dc.observe(p, tt) for p, tt in zip(plans, times, strict=True)] == \
            _ttl_reference(plans, times, ttl, bs)
    inf = DesignedCache(bs)
    full = sum(inf.observe(p) for p in plans)
    totals = []
    for cap in (64, 2000, 8000, 30000, 10**9):
        dc = DesignedCache(bs, capacity_tokens=cap)
        totals.append(sum(dc.observe(p) for p in plans))
    assert totals == sorted(totals) and totals[-1] == full and totals[0] < full
    long_ttl = DesignedCache(bs, ttl_s=1e12)
    assert sum(long_ttl.observe(p, tt) for p, tt in zip(plans, times, strict=True)) == full


def test_load_shape_stages_ramp_and_budget() -> None:
    shape = LoadShape(stages=(Stage(users=2, duration_s=10), Stage(users=6, duration_s=10,
                                                                   ramp_s=4)))
    assert shape.max_users(1) == 6 and shape.stages_duration_s == 20
    assert shape.active_users(5, 1) == 2 and shape.active_users(12, 1) == 4
    assert shape.start_time(0, 1) == 0 and shape.start_time(2, 1) == 11
    assert shape.next_active(5, 3.0) == 14 and shape.next_active(1, 3.0) == 3.0
    ramp = LoadShape(ramp_s=60)
    assert [ramp.start_time(u, 4) for u in range(4)] == [0, 15, 30, 45]
    b = TokenBudget(input_tpm=6000, output_tpm=None)
    assert b.admit(5000, 0.0) and not b.admit(5000, 1.0) and b.admit(5000, 45.0)
    big = TokenBudget(input_tpm=1000, output_tpm=None)
    assert big.admit(50_000, 0.0)  # larger than a minute's budget: passes when full
    assert not big.admit(10, 1.0)


@pytest.mark.parametrize(("load", "match"), [
    ({"arrival": "poisson"}, "load.rate_per_s: arrival 'poisson' needs rate_per_s > 0"),
    ({"arrival": "burst", "rate_per_s": 1},
     "load.arrival: must be one of closed, poisson, gamma, got 'burst'"),
    ({"rate_per_s": 2}, "load.rate_per_s: needs arrival: poisson or gamma"),
    ({"stages": [{"users": 2}]}, "load.stages.0.duration_s: required key is missing"),
    ({"input_tpm": 0}, "load.input_tpm: must be > 0, got 0"),
    ({"rampp_s": 3}, "load.rampp_s: unknown key; valid: .*ramp_s"),
])
def test_load_errors_name_the_key(load, match) -> None:
    with pytest.raises(ConfigError, match=f"^t.py::x: {match}"):
        load_workload("coding_agent", {"load": load}, where="t.py::x")


def test_yaml_load_errors_point_at_the_nested_line(tmp_path) -> None:
    p = tmp_path / "w.yaml"
    p.write_text("kind: coding_swarm\nusers: 4\nload:\n  arrival: poisson\n  rate_pr_s: 2\n")
    with pytest.raises(ConfigError, match=r"w.yaml:5: load.rate_pr_s: unknown key; valid: "):
        load_workload(str(p))
    p.write_text("kind: coding_swarm\nload:\n  ramp_s: 2\n  arrival: sometimes\n")
    with pytest.raises(ConfigError, match=r"w.yaml:4: load.arrival: must be one of"):
        load_workload(str(p))
    # a marker's override is named by its own source, a file's value by its line
    p.write_text("kind: coding_swarm\nusers: -4\n")
    with pytest.raises(ConfigError, match=r"w.yaml:2: users: must be > 0, got -4"):
        load_workload(str(p), {"max_requests": 3}, where="t.py::x")
    p.write_text("kind: coding_swarm\nusers: 4\n")
    with pytest.raises(ConfigError, match=r"^t.py::x: users: must be > 0, got -4"):
        load_workload(str(p), {"users": -4}, where="t.py::x")
    p.write_text("kind: coding_swarm\nload:\n  arrival: poisson\n  rate_per_s: 2\n")
    wl = load_workload(str(p), {"load": {"max_concurrency": 5}})  # marker merges key by key
    assert (wl.load.arrival, wl.load.rate_per_s, wl.load.max_concurrency) == ("poisson", 2.0, 5)


@pytest.mark.parametrize("name", ["coding-agent", "agent-swarm", "target-cache-rate",
                                  "growing-working-set", "trace-replay"])
def test_ready_definitions_load_and_take_overrides(name: str) -> None:
    wl = load_workload(name, {"users": 3, "max_requests": 10})
    assert wl.users == 3 and wl.max_requests == 10
    p = plan_workload(wl, duration_s=600)
    assert 0 < len(p) <= 10


def test_plan_bounds_and_open_loop_arrivals() -> None:
    wl = load_workload("target_cache_rate", {"users": 1, "duration_s": 1000,
                                             "load": {"arrival": "poisson", "rate_per_s": 2}})
    p = plan_workload(wl)
    assert 1800 < len(p) < 2200  # one request per arrival
    g = load_workload("target_cache_rate", {"users": 1, "duration_s": 1000, "load": {
        "arrival": "gamma", "rate_per_s": 2, "gamma_shape": 0.2}})
    gaps = np.diff(plan_workload(g).t_s)
    assert gaps.std() / gaps.mean() > 1.6  # burstier than Poisson (cv 1)
