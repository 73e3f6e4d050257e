"""Speed of ``ctxplat analyze`` on a trace set the size of the public kv-cache-tester set.

The public set (739 Claude Code sessions, about 50,000 requests, 95 million block
references, 3.5 million distinct blocks) is not shipped, so this generates a synthetic set
of the same size and shape in kv-cache-tester format (statistics from REFERENCE.md
section 2: median 45 requests a session, context from ~20k to ~115k tokens, think times
with 18% of gaps over 60 s and 5% over 300 s, occasional compaction, subagents), writes
it to a temp folder, then times reading it and analysing three TTLs plus the LRU curve.

    python benchmarks/bench_analysis.py [--sessions 739] [--keep DIR]

Prints the figures and peak RSS (``resource.getrusage``). Target: < 60 s, < 2 GB.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson


def _session(idx: int, rng: random.Random) -> dict:
    bs = 64
    n_req = max(2, int(rng.lognormvariate(np.log(45.5), 0.82)))
    n_req = min(n_req, 400)
    start_tok = int(rng.uniform(12_000, 28_000))
    scale = (n_req / 45.5) ** 0.6
    end_tok = int(max(start_tok + 5_000, rng.lognormvariate(np.log(135_000 * scale), 0.3)))
    end_tok = min(end_tok, 195_000)
    system = start_tok // bs // 2
    ids = np.arange(1, start_tok // bs + 1, dtype=np.int64)
    nxt = int(ids[-1]) + 1
    t = 0.0
    reqs: list[dict] = []
    subagents_left = 1 if rng.random() < 0.09 else 0
    for i in range(n_req):
        if i:
            u = rng.random()
            think = (rng.uniform(0.5, 20) if u < 0.82 else rng.uniform(60, 300) if u < 0.95
                     else rng.uniform(300, 3600) if u < 0.995 else rng.uniform(3600, 7200))
            t += think + rng.uniform(2, 10)
        else:
            think = 0.0
        # concave growth: contexts fill quickly, then creep towards the end size
        want = start_tok + (end_tok - start_tok) * (i / max(1, n_req - 1)) ** 0.35
        grow = max(1, int(want) // bs - len(ids) + rng.randint(-3, 3))
        u = rng.random()
        if u < 0.026 and len(ids) > system + 50:
            # rewrite: the context after the system prefix comes back with new ids
            # (seen in the real traces, e.g. after thinking blocks are dropped)
            keep = len(ids) if u < 0.022 else system + rng.randint(20, 200)  # or compaction
            ids = np.concatenate((ids[:system], np.arange(nxt, nxt + keep - system)))
            nxt += keep - system
        ids = np.concatenate((ids, np.arange(nxt, nxt + grow, dtype=np.int64)))
        nxt += grow
        n_in = len(ids) * bs + rng.randint(0, bs - 1)
        reqs.append({"t": round(t, 3), "type": "n", "model": "m", "in": n_in,
                     "out": int(rng.lognormvariate(np.log(216), 1.0)), "hash_ids": ids,
                     "input_types": ["tool_result"], "output_types": ["text"],
                     "stop": "tool_use", "api_time": round(rng.uniform(2, 12), 2),
                     "think_time": round(think, 2)})
        if subagents_left and i == n_req // 2:
            subagents_left = 0
            start = t + 5
            for a in range(rng.randint(1, 3)):
                sids = ids[:system]
                inner = []
                st = 0.0
                for _ in range(rng.randint(3, 12)):
                    add = rng.randint(50, 600)
                    sids = np.concatenate((sids, np.arange(nxt, nxt + add)))
                    nxt += add
                    inner.append({"t": st, "type": "n", "model": "h", "in": len(sids) * bs,
                                  "out": 200, "hash_ids": sids, "api_time": 2.0,
                                  "think_time": 3.0})
                    st += rng.uniform(3, 12)
                reqs.append({"t": round(start + st + 2, 3), "type": "subagent",
                             "agent_id": f"agent_{a}", "duration_ms": int((st + 2) * 1000),
                             "requests": inner})
            t = start + 60
    return {"id": f"synthetic_{idx:04d}", "block_size": bs, "hash_id_scope": "local",
            "requests": reqs}


def generate(folder: Path, sessions: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    for i in range(sessions):
        doc = _session(i, rng)
        (folder / f"trace_{i:04d}.json").write_bytes(
            orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=739)
    ap.add_argument("--keep", help="generate into (or reuse) this folder and keep it")
    args = ap.parse_args(argv)
    from pytest_ctxplat.analysis import analyze
    from pytest_ctxplat.workload.traces import read_trace

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ctxplat-analysis-bench-"))
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        if not any(tmp.glob("*.json")):
            t0 = time.perf_counter()
            generate(tmp, args.sessions)
            print(f"generated {args.sessions} sessions in {time.perf_counter() - t0:.1f} s "
                  f"({sum(p.stat().st_size for p in tmp.glob('*.json')) / 1e6:.0f} MB)")
        load = os.getloadavg()
        t0 = time.perf_counter()
        trace = read_trace(tmp)
        t1 = time.perf_counter()
        result = analyze(trace, ttls=[60, 300, 3600], lru_points=10)
        t2 = time.perf_counter()
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"requests            {result.requests:,}")
        print(f"block references    {result.block_refs:,}")
        print(f"distinct blocks     {result.distinct_blocks:,}")
        print(f"read                {t1 - t0:.1f} s")
        print(f"analyse (3 TTL+LRU) {t2 - t1:.1f} s")
        print(f"total               {t2 - t0:.1f} s   (target < 60 s)")
        print(f"peak RSS            {rss_mb:,.0f} MB (target < 2048 MB)")
        print(f"load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        for ttl, s in result.ttl.items():
            print(f"  TTL {ttl:>6} s: block hit {s['block_hit_rate']:.3f}  peak working set "
                  f"{s['peak_working_set_tokens'] / 1e6:.1f} M tokens")
        ok = (t2 - t0) < 60 and rss_mb < 2048
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
