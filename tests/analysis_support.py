"""Brute-force reference of the cache-analysis semantics, written straight from the rules
in docs/reference/analysis.md, plus a seeded random trace generator. Slow on purpose."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

from pytest_ctxplat.workload.traces import Trace, build_trace


@dataclass
class Req:
    t: float
    blocks: list[int]  # distinct, first occurrence order
    tokens: list[int]  # tokens per block


def requests_of(trace: Trace) -> list[Req]:
    out = []
    for i in range(len(trace)):
        ids = [int(x) for x in trace.blocks(i)]
        toks = [int(x) for x in trace.block_tokens(i)]
        seen: set[int] = set()
        b2, t2 = [], []
        for b, k in zip(ids, toks, strict=True):
            if b in seen:
                continue
            seen.add(b)
            b2.append(b)
            t2.append(k)
        out.append(Req(float(trace.arrival_s[i]), b2, t2))
    return out


def ttl_reference(reqs: list[Req], ttl: float, block_size: int) -> dict[str, float]:
    last: dict[int, float] = {}
    hits = hit_tok = refs = tok = 0
    peak = 0
    misses = 0
    history: list[tuple[float, dict[int, float]]] = []
    for q in reqs:
        ok = True
        for b, k in zip(q.blocks, q.tokens, strict=True):
            cached = b in last and q.t - last[b] <= ttl
            ok = ok and cached
            refs += 1
            tok += k
            if ok:
                hits += 1
                hit_tok += k
            else:
                misses += 1
        for b in q.blocks:
            last[b] = q.t
        live = sum(1 for a in last.values() if q.t - a <= ttl)
        peak = max(peak, live)
        history.append((q.t, dict(last)))
    # mean working set: integrate the live count over [first, last arrival]
    t0, t1 = reqs[0].t, reqs[-1].t
    if t1 > t0:
        points = {t0, t1}
        for _, state in history:
            for a in state.values():
                if t0 < a + ttl < t1:
                    points.add(a + ttl)
        for q in reqs:
            points.add(q.t)
        xs = sorted(points)
        area = 0.0
        for x0, x1 in itertools.pairwise(xs):
            mid = (x0 + x1) / 2
            state = {}
            for at, st in history:
                if at <= mid:
                    state = st
            area += (x1 - x0) * sum(1 for a in state.values() if mid - a <= ttl)
        mean = area / (t1 - t0)
    else:
        mean = float(sum(1 for a in last.values() if t1 - a <= ttl))
    return {
        "block_hit_rate": hits / refs if refs else 0.0,
        "token_hit_rate": hit_tok / tok if tok else 0.0,
        "peak_working_set_tokens": peak * block_size,
        "mean_working_set_tokens": mean * block_size,
        "misses_per_block": misses / len(last) if last else 0.0,
    }


def lru_reference(reqs: list[Req], capacity: int) -> tuple[int, int]:
    """An actual LRU cache of ``capacity`` blocks; returns (hit blocks, hit tokens)."""
    cache: list[int] = []  # most recent first
    hits = hit_tok = 0
    for q in reqs:
        present = set(cache)
        ok = True
        for b, k in zip(q.blocks, q.tokens, strict=True):
            ok = ok and b in present
            if ok:
                hits += 1
                hit_tok += k
        rest = [b for b in cache if b not in set(q.blocks)]
        cache = (list(q.blocks) + rest)[:capacity]
    return hits, hit_tok


def random_trace(seed: int) -> Trace:
    """A small random trace with prefix sharing, repeats, ties and partial blocks."""
    rng = random.Random(seed)
    bs = rng.choice([1, 4, 16])
    n_sessions = rng.randint(1, 4)
    contexts: list[list[int]] = [[] for _ in range(n_sessions)]
    shared = [rng.randint(0, 10**6) for _ in range(rng.randint(0, 4))]
    nxt = 10**7
    arrivals, tokens, blocks, sessions, partial = [], [], [], [], []
    t = 0.0
    for _ in range(rng.randint(1, 30)):
        s = rng.randrange(n_sessions)
        ctx = contexts[s]
        if not ctx or rng.random() < 0.15:
            ctx = list(shared[: rng.randint(0, len(shared))])
        elif rng.random() < 0.2:
            ctx = ctx[: rng.randint(0, len(ctx))]  # compaction / branch
        add = rng.randint(0, 6)
        ctx = ctx + list(range(nxt, nxt + add))
        nxt += add
        contexts[s] = ctx
        ids = list(ctx)
        if ids and rng.random() < 0.1:
            ids.insert(rng.randrange(len(ids)), rng.choice(ids))  # a repeated id
        t += rng.choice([0.0, 0.0, 0.5, 1.0, 2.0, 3.0, 7.5, 30.0])
        p = bool(ids) and rng.random() < 0.3
        n_tok = len(ids) * bs - (rng.randint(1, bs - 1) if p and bs > 1 else 0)
        partial.append(p and bs > 1)
        arrivals.append(t)
        tokens.append(n_tok)
        blocks.append(ids)
        sessions.append(s)
    return build_trace(f"random-{seed}", bs, arrivals, tokens, blocks,
                       last_block_partial=partial, session=sessions,
                       session_names=[f"s{i}" for i in range(n_sessions)])


def close(a: float, b: float, rel: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)
