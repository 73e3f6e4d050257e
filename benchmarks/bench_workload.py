"""Workload costs: building one request with a large context, and planning a big swarm.

1. Request building: a coding-agent context of ``--context`` tokens (100k by default,
   64-token blocks) rendered as the runner does it (``OutgoingRequest.body()``: the JSON
   body for ``/v1/completions``, and for ``/v1/chat/completions`` with messages rendered
   as words), in CPU time (``time.process_time``) per request, median of ``--repeats``
   rounds: with every block new to the run (a fresh runner: token synthesis and
   rendering of every block), and as the last turn of the session that grew to it (its
   earlier requests rendered before, untimed: the context it resends is cached); and the
   token ids alone (what an in-process sink reads instead). Target: at most 1 ms per
   request, completions and chat.
2. Planning: ``plan_workload`` of a ``--users``-orchestrator coding swarm for
   ``--duration`` seconds (every request, its time and block plan), then its designed
   hit rates (infinite cache and a 5-minute TTL). Target: planning under 5 s for 1,000
   users and one hour.

    python benchmarks/bench_workload.py [--context 100000] [--users 1000] [--duration 3600]

The machine is shared: the script prints the load average beside the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from pytest_ctxplat.driver.runner import OutgoingRequest, Runner, RunOptions
from pytest_ctxplat.workload import BlockIdAllocator, SessionStream, load_workload
from pytest_ctxplat.workload.plan import plan_workload


def bench_request(context: int, repeats: int) -> None:
    spec = load_workload("coding_agent", {"users": 1})
    ids = BlockIdAllocator()
    stream = SessionStream.start(64, ids, ids.take(spec.shared_tokens // 64))
    stream.extend(spec.shared_tokens % 64, role="system")
    stream.extend(4000, role="user")
    turns = []  # the session's earlier requests, as it grew
    while stream.tokens < context - 3000:
        turns.append(stream.request(256))
        stream.extend(300, role="tool_call")
        stream.extend(2400, role="tool")
    stream.extend(context - stream.tokens, role="user")
    plan = stream.request(256)
    for api in ("completions", "chat"):
        wl = load_workload("coding_agent", {"users": 1, "api": api})

        def runner(wl: object = wl) -> Runner:
            return Runner(wl, _NullSink(), RunOptions(model="m", seed=1,  # type: ignore[arg-type]
                                                      chat_overhead_tokens=1))

        OutgoingRequest(runner(), plan, "/v1/" + api).body()  # tables, imports
        n = 50
        cold: list[float] = []
        warm: list[float] = []
        tok: list[float] = []
        size = 0
        for _ in range(repeats):
            t_cold = t_warm = t_tok = 0.0
            for _ in range(n):
                r = runner()
                t0 = time.process_time()
                size = len(OutgoingRequest(r, plan, "/v1/" + api).body())
                t1 = time.process_time()
                r = runner()
                for earlier in turns:
                    OutgoingRequest(r, earlier, "/v1/" + api).body()
                t1a = time.process_time()
                OutgoingRequest(r, plan, "/v1/" + api).body()
                t2 = time.process_time()
                OutgoingRequest(r, plan, "/v1/" + api).tokens()
                t3 = time.process_time()
                t_cold += t1 - t0
                t_warm += t2 - t1a
                t_tok += t3 - t2
            cold.append(t_cold / n)
            warm.append(t_warm / n)
            tok.append(t_tok / n)
        print(f"build one request body, {plan.prompt_tokens:,} tokens, {api:<11}: "
              f"{_ms(cold)} ms CPU with every block new, {_ms(warm)} ms as turn "
              f"{len(turns) + 1} of its session ({size / 1e6:.2f} MB); token ids alone "
              f"(in-process sinks) "
              f"{_ms(tok)} ms; median [min-max] of {repeats} x {n}")


def _ms(values: list[float]) -> str:
    return (f"{statistics.median(values) * 1e3:.3f} "
            f"[{min(values) * 1e3:.3f}-{max(values) * 1e3:.3f}]")


class _NullSink:
    async def submit(self, request: object, record: object, now: object) -> None:
        return None


def bench_plan(users: int, duration: float, repeats: int) -> None:
    spec = load_workload("coding_swarm", {"users": users, "recycle": True,
                                          "duration_s": duration})
    times = []
    plan = None
    for _ in range(repeats):
        t0 = time.process_time()
        plan = plan_workload(spec)
        times.append(time.process_time() - t0)
    assert plan is not None
    subs = sum(1 for s in plan.session_id if "-a" in s)
    print(f"plan a {users:,}-orchestrator swarm for {duration:g} s: "
          f"{statistics.median(times):.2f} s CPU (median of {repeats}; "
          f"{len(plan):,} requests, {subs:,} from subagents, "
          f"{int(plan.prompt_tokens.sum()) / 1e9:.2f} G prompt tokens)")
    t0 = time.process_time()
    inf = plan.designed_rate()
    t1 = time.process_time()
    ttl = plan.designed_rate(ttl_s=300)
    t2 = time.process_time()
    print(f"  designed hit rate: infinite {inf:.3f} ({t1 - t0:.2f} s), "
          f"5-minute TTL {ttl:.3f} ({t2 - t1:.2f} s); "
          f"mean prompt {float(np.mean(plan.prompt_tokens)):,.0f} tokens")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--context", type=int, default=100_000)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--duration", type=float, default=3600.0)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    bench_request(args.context, args.repeats)
    bench_plan(args.users, args.duration, max(1, args.repeats // 2))
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
