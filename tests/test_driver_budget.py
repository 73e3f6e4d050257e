"""One request budget shared by the worker processes of a split run (driver.budget):
the workers of a run bounded by ``max_requests`` end together."""

from __future__ import annotations

import asyncio
import multiprocessing as mp

import pytest
from workload_support import FakeSink

from pytest_ctxplat.driver.budget import RequestBudget
from pytest_ctxplat.driver.runner import Runner, RunOptions
from pytest_ctxplat.errors import ConfigError
from pytest_ctxplat.workload import load_workload

SCALE = 20.0  # loop time = model time / 20: the fake latencies, not the CPU, set the pace
CHAT = {"users": 8, "turns": 1, "think_time_s": 0.0, "start_spread_s": 0.0,
        "system_prompt_tokens": 32, "user_tokens": 32, "output_tokens": 4, "block_size": 16,
        "recycle": True, "max_requests": 240}


def _draw_all(budget: RequestBudget) -> list[int]:
    draws = []
    while n := budget.draw():
        draws.append(n)
    return draws


def test_draws_add_up_to_the_total_in_shrinking_chunks() -> None:
    budget = RequestBudget(10_000, 2)
    draws = _draw_all(budget)
    assert sum(draws) == 10_000 and budget.left == 0
    assert draws[0] == 10_000 // 8  # a quarter of one worker's even share
    assert draws == sorted(draws, reverse=True) and draws[-8:] == [1] * 8
    assert len(draws) < 100  # a draw is a lock round trip: rare, not one per request
    assert budget.draw() == 0


def test_requests_given_back_are_drawn_again() -> None:
    budget = RequestBudget(3, 1)
    assert _draw_all(budget) == [1, 1, 1]
    budget.give_back(2)
    budget.give_back(0)
    assert budget.left == 2 and _draw_all(budget) == [1, 1]


@pytest.mark.parametrize(("total", "parts", "word"), [
    (-1, 2, "expected an integer >= 0, got -1"), (1.5, 2, "got 1.5"),
    (10, 0, "parts must be an integer >= 1, got 0"), (10, True, "got True")])
def test_a_bad_budget_is_refused(total: object, parts: object, word: str) -> None:
    with pytest.raises(ConfigError, match=word):
        RequestBudget(total, parts)  # type: ignore[arg-type]


def _drawer(budget: RequestBudget, out: mp.Queue) -> None:  # type: ignore[type-arg]
    out.put(sum(_draw_all(budget)))


def test_processes_draw_from_one_pool() -> None:
    ctx = mp.get_context("spawn")
    budget = RequestBudget(50_000, 3, context=ctx)
    out = ctx.Queue()
    procs = [ctx.Process(target=_drawer, args=(budget, out)) for _ in range(3)]
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    assert sum(got) == 50_000 and budget.left == 0  # nothing drawn twice or lost


def _play_two(budget: RequestBudget | None) -> tuple[list[int], list[float]]:
    """Two parts of one run in one loop: part 0's server answers 4x faster."""
    # fixed shares: each part's spec carries its half of the bound
    spec = load_workload("chat", CHAT if budget else {**CHAT, "max_requests": 120})
    sinks = [FakeSink(SCALE, ttft_s=0.05, tpot_s=0.01), FakeSink(SCALE, ttft_s=0.2,
                                                                 tpot_s=0.04)]
    runners = [Runner(spec, sink, RunOptions(model="m", time_scale=SCALE, part=(i, 2),
                                             budget=budget))
               for i, sink in enumerate(sinks)]

    async def both() -> None:
        await asyncio.gather(*(r.run() for r in runners))

    asyncio.run(both())
    return ([len(r.records) for r in runners],
            [max(x.end_s or 0.0 for x in r.records) for r in runners])


def test_a_shared_budget_lets_the_faster_part_play_more_and_both_end_together() -> None:
    counts, ends = _play_two(RequestBudget(240, 2))
    assert sum(counts) == 240  # the run's bound, exactly
    assert counts[0] > 2 * counts[1]  # the fast part did most of the run
    assert abs(ends[0] - ends[1]) < 0.5  # model seconds: one slow request apart at most
    fixed, fixed_ends = _play_two(None)
    assert fixed == [120, 120]
    assert fixed_ends[1] > 2 * fixed_ends[0]  # fixed shares: the slow part ends alone


def test_requests_a_part_drew_and_did_not_send_go_back() -> None:
    spec = load_workload("chat", {**CHAT, "recycle": False, "max_requests": None,
                                  "turns": 2})  # 8 users x 2 turns, then no more sessions
    budget = RequestBudget(1_000, 2)
    runner = Runner(spec, FakeSink(SCALE), RunOptions(model="m", time_scale=SCALE,
                                                      part=(0, 2), budget=budget))
    records = asyncio.run(runner.run())
    assert len(records) == 8  # its 4 users' sessions, nothing more
    assert budget.left == 1_000 - 8  # the rest of its draws went back
