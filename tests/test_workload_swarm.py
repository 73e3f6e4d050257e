"""A coding swarm of 32 orchestrators with subagents, run as a pytest test against the
embedded simulator, and the structure of what it sent: shared-prefix hits across users,
context growth, compaction, parallel subagents."""

from __future__ import annotations

pytest_plugins = ["pytester"]

SWARM_TEST = '''
import pytest

SHARED = (1300 + 7600) // 64 * 64     # system prompt + tool definitions, whole blocks

@pytest.mark.workload("coding_swarm", users=32, human_turns=2, tool_steps_mean=3.0,
                      think_time_median_s=3.0, think_time_sigma=0.5, tool_latency_s=0.5,
                      initial_context_tokens=4000, tool_result_tokens=2500,
                      context_limit_tokens=24000, summary_tokens=1000,
                      spawn_probability=0.35, subagents_max=3, subagent_tool_steps_mean=2.0,
                      output_tokens=32, start_spread_s=20.0)
def test_swarm(ctxplat_run):
    result = ctxplat_run()
    records = result.records
    assert result.metrics["errors"] == 0
    by_session = {}
    for r in records:
        by_session.setdefault(r.session_id, []).append(r)
    mains = {s: rs for s, rs in by_session.items() if "-a" not in s}
    subs = {s: rs for s, rs in by_session.items() if "-a" in s}
    assert len(mains) == 32 and len(subs) >= 20

    # every user re-uses the shared system + tools prefix that someone else computed
    firsts = sorted((rs[0] for rs in mains.values()), key=lambda r: r.start_s)
    assert sum(r.cached_tokens >= SHARED for r in firsts[1:]) >= 28
    assert all((rs[0].cached_tokens or 0) >= SHARED for rs in subs.values()
               if rs[0].start_s > firsts[0].end_s)

    # contexts grow (each request re-sends the previous one) until a compaction
    grew = compacted = 0
    for rs in mains.values():
        for prev, cur in zip(rs, rs[1:]):
            if cur.prompt_tokens > prev.prompt_tokens:
                grew += 1
                assert cur.cached_tokens >= prev.prompt_tokens - 64
            else:  # a summary replaced the history: only the shared prefix is reused
                compacted += 1
                assert prev.prompt_tokens >= 24000
                assert SHARED <= cur.cached_tokens < SHARED + 64
    assert grew > 100 and compacted >= 3

    # subagents of one spawn run in parallel, and their parent waits for them
    parallel = 0
    for parent, rs in mains.items():
        kids = sorted((k[0].start_s, k[-1].end_s) for s, k in subs.items()
                      if s.startswith(parent + "-a"))
        parallel += sum(s2 < e1 for (_, e1), (s2, _) in zip(kids, kids[1:]))
        for r in rs:
            assert not any(s < r.start_s < e for s, e in kids)
    assert parallel >= 5
    assert abs(result.hit_rates.request - result.hit_rates.designed) < 0.02
'''


def test_coding_swarm_of_32_orchestrators_against_the_simulator(pytester) -> None:
    pytester.makepyfile(test_swarm=SWARM_TEST)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    # an unbounded cache (so that every designed hit can be served) with 64-token blocks
    profile = pytester.path / "fixtures" / "servers" / "sim-unbounded.yaml"
    profile.parent.mkdir(parents=True)
    profile.write_text("launcher: sim\nsim:\n  block_size: 64\n"
                       "  kv_capacity_tokens: 50000000\n")
    res = pytester.runpytest("--ctxplat-server=sim-unbounded", "--ctxplat-sim-speedup=20",
                             "-p", "no:cacheprovider",
                             f"--ctxplat-results={pytester.path / 'results'}")
    res.assert_outcomes(passed=1)
