"""The runner's load shapes, spawn steps, timed replay and designed variants, against an
in-process fake sink on a fast clock (model time = loop time x 200)."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest
from workload_support import AGENT_TRACE, FakeSink

from pytest_ctxplat.driver.runner import Runner, RunOptions
from pytest_ctxplat.workload import load_workload

SCALE = 200.0


def run(workload, **opts):
    sink = FakeSink(SCALE)
    runner = Runner(workload, sink, RunOptions(model="m", time_scale=SCALE, **opts))
    records = asyncio.run(runner.run())
    return runner, records, sink


SWARM = {"users": 4, "human_turns": 2, "tool_steps_mean": 3.0, "initial_context_tokens": 1000,
         "tool_result_tokens": 300, "think_time_median_s": 2.0, "think_time_sigma": 0.5,
         "tool_latency_s": 0.5, "spawn_probability": 0.6, "subagents_max": 3,
         "subagent_tool_steps_mean": 2.0, "output_tokens": 20, "start_spread_s": 1.0}


def test_subagents_run_in_parallel_and_the_parent_waits() -> None:
    _, records, _ = run(load_workload("coding_swarm", SWARM))
    by_session: dict[str, list] = {}
    for r in records:
        by_session.setdefault(r.session_id, []).append(r)
    children = {s: rs for s, rs in by_session.items() if "-a" in s}
    assert children
    parallel = 0
    for parent, rs in by_session.items():
        if "-a" in parent:
            continue
        kids = [k for s, k in children.items() if s.startswith(parent + "-a")]
        if not kids:
            continue
        spans = sorted((k[0].start_s, k[-1].end_s) for k in kids)
        for (_, e1), (s2, _) in itertools.pairwise(spans):
            parallel += s2 < e1  # a sibling started before the other ended
        # every parent request is outside its children's lifetimes: the parent waits
        for r in rs:
            for s, e in spans:
                assert not (s < r.start_s < e)
    assert parallel >= 1


def test_ramp_starts_users_over_time_and_stages_limit_users() -> None:
    wl = load_workload("target_cache_rate", {
        "users": 4, "prompt_tokens": 512, "working_set_tokens": 4096, "output_tokens": 10,
        "think_time_s": 1.0, "duration_s": 60, "load": {"ramp_s": 30}})
    _, records, _ = run(wl)
    starts = sorted(min(r.start_s for r in records if r.user == u) for u in range(4))
    assert starts[0] < 1
    assert all(abs(s - e) < 2.0 for s, e in zip(starts[1:], [7.5, 15, 22.5], strict=True))
    staged = load_workload("target_cache_rate", {
        "users": 1, "prompt_tokens": 512, "working_set_tokens": 4096, "output_tokens": 10,
        "think_time_s": 1.0, "load": {"stages": [{"users": 1, "duration_s": 20},
                                                 {"users": 3, "duration_s": 20}]}})
    _, records, _ = run(staged)
    early = {r.user for r in records if r.start_s < 19}
    late = {r.user for r in records if r.start_s > 21}
    assert early == {0} and late == {0, 1, 2}
    # no request starts after the last stage; the clock is wall time x SCALE, so a
    # request let in just before the end may start a few scaled ms late on a busy CPU
    assert max(r.start_s for r in records) < 40.5


def test_open_loop_poisson_arrivals_and_concurrency_cap() -> None:
    wl = load_workload("target_cache_rate", {
        "users": 1, "prompt_tokens": 512, "working_set_tokens": 4096, "output_tokens": 50,
        "duration_s": 200, "load": {"arrival": "poisson", "rate_per_s": 2.0}})
    _, records, _ = run(wl)
    assert 330 < len(records) < 470
    capped = load_workload("target_cache_rate", {
        "users": 1, "prompt_tokens": 512, "working_set_tokens": 4096, "output_tokens": 50,
        "duration_s": 100, "load": {"arrival": "poisson", "rate_per_s": 5.0,
                                    "max_concurrency": 2}})
    _, records, _ = run(capped)
    events = sorted([(r.start_s, 1) for r in records] + [(r.end_s, -1) for r in records])
    live = peak = 0
    for _, d in events:
        live += d
        peak = max(peak, live)
    assert peak <= 2
    # 0.7 model s per request: two slots serve at most 2 x 100 / 0.7 ~ 286 in 100 s, far
    # below the ~500 uncapped Poisson arrivals (the cap holds arrivals back).
    assert len(records) <= 2 * 100 / 0.7 + 2


def test_token_budget_backs_off_to_the_input_rate() -> None:
    wl = load_workload("target_cache_rate", {
        "users": 2, "prompt_tokens": 1000, "working_set_tokens": 8000, "output_tokens": 10,
        "duration_s": 300, "load": {"input_tpm": 6000, "backoff_s": 1.0}})
    runner, records, _ = run(wl)
    assert runner.throttled > 0
    for u in (0, 1):
        per_user = [r for r in records if r.user == u]
        # a full bucket (6000) up front, then 6000 tokens a minute
        assert len(per_user) * 1000 <= 6000 + 6000 * 300 / 60 + 1000
        assert len(per_user) >= 25


def test_timed_replay_follows_timestamps_and_waits_for_the_previous_request() -> None:
    wl = load_workload("trace", {"path": str(AGENT_TRACE), "block_size": 64,
                                 "max_idle_s": 5.0, "output_tokens": 30,
                                 "use_trace_output": False})
    times = wl.send_times()
    _, records, _ = run(wl)
    assert len(records) == len(times)
    assert all(r.start_s >= t - 0.05 for r, t in zip(records, sorted(times), strict=False))
    by_agent: dict[str, list] = {}
    for r in records:
        by_agent.setdefault(r.session_id, []).append(r)
    assert len(by_agent) == 4  # the main agent and three subagents
    for rs in by_agent.values():
        for a, b in itertools.pairwise(rs):
            assert b.start_s >= a.end_s - 1e-6


def test_think_time_replay_spawns_subagents_and_waits() -> None:
    wl = load_workload("trace", {"path": str(AGENT_TRACE), "block_size": 64,
                                 "timing": "think_time", "max_idle_s": 3.0,
                                 "use_trace_output": False, "output_tokens": 5})
    _, records, _ = run(wl)
    assert len(records) == 24
    subs = [r for r in records if "/a" in r.session_id]
    first_sub = {r.session_id: r.start_s for r in reversed(subs)}
    # the two parallel subagents start together, after main request 4 finished
    a1, a2 = first_sub["agent-session-small/a1"], first_sub["agent-session-small/a2"]
    main = [r for r in records if r.session_id == "agent-session-small"]
    assert abs(a1 - a2) < 1.0 and a1 >= main[4].end_s - 1e-6
    last_sub_end = max(r.end_s for r in subs if r.session_id in (
        "agent-session-small/a1", "agent-session-small/a2"))
    assert main[5].start_s >= last_sub_end - 1e-6


def test_designed_variants_and_chat_bodies() -> None:
    wl = load_workload("coding_agent", {**{k: v for k, v in SWARM.items()
                                          if not k.startswith(("spawn", "sub"))},
                                       "api": "chat", "designed_ttl_s": [1.0, 1e9],
                                       "designed_capacity_tokens": [10**9]})
    runner, records, sink = run(wl, chat_overhead_tokens=1)
    v = runner.designed_variants
    assert set(v) == {"designed_ttl_1s", "designed_ttl_1e+09s", "designed_cap_1000000000"}
    infinite = [r.designed_cached_tokens for r in records]
    assert v["designed_ttl_1e+09s"] == infinite == v["designed_cap_1000000000"]
    assert sum(v["designed_ttl_1s"]) < sum(infinite)
    body = max((json.loads(b) for b in sink.bodies), key=lambda b: len(b["messages"]))
    roles = [m["role"] for m in body["messages"]]
    assert roles[:2] == ["system", "user"] and "assistant" in roles and "tool" in roles


@pytest.mark.parametrize(("bad", "message"), [
    ({"timing": "fast"}, "t::x: timing: must be one of original, think_time, got 'fast'"),
    ({"path": ""}, "t::x: path: is required"),
    ({"time_scale": 0}, "t::x: time_scale: must be > 0, got 0"),
])
def test_trace_spec_errors(bad: dict[str, object], message: str) -> None:
    from pytest_ctxplat.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_workload("trace", {"path": str(AGENT_TRACE), **bad}, where="t::x")
    assert str(info.value).startswith(message), str(info.value)


def test_subagents_launched_without_waiting_outlive_their_parent() -> None:
    import dataclasses

    import numpy as np

    from pytest_ctxplat.workload import SessionPlan, SessionStream, SpawnStep, WorkloadSpec

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Launcher(WorkloadSpec):
        kind = "launcher-test"

        def user_sessions(self, user, ctx):  # type: ignore[no-untyped-def]
            def child():  # type: ignore[no-untyped-def]
                s = SessionStream.start(16, ctx.ids, np.zeros(0, np.int64))
                for _ in range(3):
                    s.extend(40, role="user")
                    yield s.request(8, delay_s=5.0)

            parent = SessionStream.start(16, ctx.ids, np.zeros(0, np.int64))
            parent.extend(40, role="user")
            yield SessionPlan("p", iter([
                parent.request(8),
                SpawnStep((SessionPlan("p-a0", child()),), wait=False)]))

    _, records, _ = run(Launcher(users=1, block_size=16, output_tokens=8))
    # the parent ends at once; its async subagent still sends all three requests
    assert sorted(r.session_id for r in records) == ["p", "p-a0", "p-a0", "p-a0"]
    assert all(r.ok for r in records)
