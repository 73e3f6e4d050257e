"""Exact prefix-cache replay of a trace under TTL and LRU policies, in one pass.

Semantics (documented in ``docs/reference/analysis.md``, checked against a brute-force
reference in the tests):

* Requests are taken in arrival order (ties in file order). A request's block list is
  its distinct ids in first-occurrence order.
* At a request's arrival, block ``j`` is a *hit* only if it and every earlier block of
  the request are cached; then all of its blocks are inserted or refreshed at that time.
* TTL cache: an entry is live while ``now - last_access <= ttl``.
* LRU cache of ``C`` blocks: after a request, the cache keeps the ``C`` most recently used
  blocks; a request's blocks are ordered head (most recent) to tail, so when the request
  itself overflows the cache its tail blocks are evicted first.
* Tokens: each block covers ``block_size`` tokens except a partial last block
  (Mooncake), which covers its real count in token-weighted rates.
* Working set (TTL): live blocks x block size. Peak over arrival instants (right after
  insertion), mean = time integral over ``[first arrival, last arrival]`` / that span.

How it is computed. One loop over requests keeps, per block, the request that last
touched it and its position there. A request's blocks split into *runs* of consecutive
blocks last touched by the same earlier request ``p``; the reuse gap ``t_r - t_p`` is the
same for the whole run, so TTL hit rates, refresh counts and live time follow from run
records with vectorised arithmetic after the loop, for any number of TTLs. LRU uses
stack distances (Mattson): the depth of a block is one plus the blocks touched since
(later requests, counted with a Fenwick tree over requests, plus the blocks ahead of it in
its own last request that no later request has touched). A capacity ``C`` hits a block
when the running maximum of depths along the request stays ``<= C``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..workload.traces import Trace

__all__ = ["CacheStats", "lru_grid", "replay_cache"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class CacheStats:
    """Raw counts from :func:`simulate`; rates are derived in :mod:`.analyze`."""

    requests: int
    block_size: int
    distinct_blocks: int
    block_refs: int  # distinct blocks summed over requests
    token_refs: int  # tokens covered by those blocks
    span_s: float  # last arrival - first arrival
    session_time_s: float  # sum over sessions of (last - first arrival)
    ttls: F64  # TTLs, seconds (may include inf)
    ttl_hit_blocks: I64
    ttl_hit_tokens: I64
    ttl_peak_blocks: I64
    ttl_mean_blocks: F64  # mean live blocks over the span
    ttl_occupancy_block_s: F64  # live block-seconds, expiry tails not clipped
    infinite_hit_blocks: int
    infinite_hit_tokens: int
    lru_capacity_blocks: I64
    lru_hit_blocks: I64
    lru_hit_tokens: I64


class _Fenwick:
    """Prefix sums over request indices with point updates."""

    __slots__ = ("n", "tree")

    def __init__(self, n: int) -> None:
        self.n = n
        self.tree = [0] * (n + 1)

    def add(self, i: int, v: int) -> None:
        i += 1
        tree, n = self.tree, self.n
        while i <= n:
            tree[i] += v
            i += i & -i

    def prefix(self, i: int) -> int:
        """Sum of entries 0..i."""
        i += 1
        s = 0
        tree = self.tree
        while i > 0:
            s += tree[i]
            i -= i & -i
        return s


def lru_grid(distinct_blocks: int, points: int = 256) -> I64:
    """Log-spaced capacities (blocks) from 1 to ``distinct_blocks``, integers, unique."""
    if distinct_blocks <= 0:
        return np.array([1], np.int64)
    g = np.unique(np.round(np.geomspace(1, distinct_blocks, points)).astype(np.int64))
    return g


def replay_cache(
    trace: Trace,
    ttls: Sequence[float],
    *,
    lru_capacities: Sequence[int] | I64 | None = None,
) -> CacheStats:
    """Run the TTL caches (one per value in ``ttls``) and the LRU stack over ``trace``.

    ``lru_capacities`` are in blocks (default: :func:`lru_grid`)."""
    ttl_arr = np.asarray(sorted(set(float(x) for x in ttls)), np.float64)
    if (ttl_arr < 0).any() or np.isnan(ttl_arr).any():
        raise ValueError(f"TTLs must be >= 0 seconds, got {list(ttls)}")
    caps = np.asarray(
        sorted(set(int(c) for c in lru_capacities)) if lru_capacities is not None
        else lru_grid(trace.num_blocks), np.int64)
    if len(caps) and caps[0] < 1:
        raise ValueError("LRU capacities must be >= 1 block")
    state = _Replay(trace, caps)
    for r in range(len(trace)):
        state.request(r)
    return state.stats(ttl_arr)


class _Replay:
    """The state of one pass over a trace (see the module docstring)."""

    def __init__(self, trace: Trace, caps: I64) -> None:
        n_req = len(trace)
        d = trace.num_blocks
        self.trace = trace
        self.caps = caps
        self.bs = trace.block_size
        self.last_req = np.full(d, -1, np.int64)
        self.last_pos = np.zeros(d, np.int64)
        self.stamp = np.full(d, -1, np.int64)
        self.masks: dict[int, npt.NDArray[np.bool_]] = {}
        self.fen = _Fenwick(max(n_req, 1))
        self.owned_total = 0
        self.n_distinct = np.zeros(n_req, np.int64)
        self.lru_hits = np.zeros(len(caps), np.int64)
        self.lru_tok = np.zeros(len(caps), np.int64)
        self.token_refs = 0
        self.partial_tok = np.full(n_req, self.bs, np.int64)  # tokens of the last block
        # run records: request, previous request (-1 unseen), length, running max gap
        self.run_r: list[I64] = []
        self.run_p: list[I64] = []
        self.run_len: list[I64] = []
        self.run_cmg: list[F64] = []
        self.ar = np.arange(int(trace.blocks_per_request.max(initial=0)) + 1, dtype=np.int64)

    def _distinct(self, r: int) -> tuple[I64, int]:
        """Request ``r``'s distinct block ids (first occurrence order) and the tokens of
        its last kept block."""
        tr, bs, ar = self.trace, self.bs, self.ar
        ids = tr.block_ids[tr.block_offsets[r]: tr.block_offsets[r + 1]]
        n = len(ids)
        last_tokens = int(tr.input_tokens[r]) - (n - 1) * bs if tr.last_block_partial[r] \
            else bs
        self.stamp[ids[::-1]] = ar[:n][::-1]
        if (self.stamp[ids] != ar[:n]).any():
            keep = np.flatnonzero(self.stamp[ids] == ar[:n])
            if keep[-1] != n - 1:
                last_tokens = bs
            ids = ids[keep]
        return ids, last_tokens

    def request(self, r: int) -> None:
        """Account request ``r`` (arrival order)."""
        if self.trace.block_offsets[r] == self.trace.block_offsets[r + 1]:
            return
        ids, last_tokens = self._distinct(r)
        n = len(ids)
        self.n_distinct[r] = n
        self.partial_tok[r] = last_tokens
        self.token_refs += (n - 1) * self.bs + last_tokens
        prev = self.last_req[ids]
        starts = np.concatenate(([0], np.flatnonzero(prev[1:] != prev[:-1]) + 1)) if n > 1 \
            else np.zeros(1, np.int64)
        pv = prev[starts]
        lens = np.diff(np.append(starts, n))
        t = self.trace.arrival_s
        gap = np.where(pv >= 0, t[r] - t[np.maximum(pv, 0)], np.inf)
        self.run_r.append(np.full(len(starts), r, np.int64))
        self.run_p.append(pv)
        self.run_len.append(lens)
        self.run_cmg.append(np.maximum.accumulate(gap))
        pos = self.last_pos[ids]
        touched = self._lru(n, last_tokens, pv, starts, lens, pos)
        self._update(r, ids, n, pv, starts, lens, pos, touched)

    def _lru(self, n: int, last_tokens: int, pv: I64, starts: I64, lens: I64, pos: I64
             ) -> dict[int, tuple[int, I64]]:
        """LRU hits of this request from its blocks' stack depths (before its updates);
        returns the earlier requests it takes blocks from."""
        depth = np.empty(n, np.float64)
        seen: dict[int, tuple[int, I64]] = {}
        for k in range(len(starts)):
            p = int(pv[k])
            a = int(starts[k])
            b = a + int(lens[k])
            if p < 0:
                depth[a:b] = np.inf
                continue
            got = seen.get(p)
            if got is None:
                got = (self.owned_total - self.fen.prefix(p),
                       np.cumsum(self.masks[p], dtype=np.int64))
                seen[p] = got
            above, csum = got
            # owned positions before pp in request p = csum[pp] - 1 (pp itself is owned)
            depth[a:b] = 1 + above + csum[pos[a:b]] - 1
        cnt = np.searchsorted(np.maximum.accumulate(depth), self.caps, side="right")
        self.lru_hits += cnt
        self.lru_tok += cnt * self.bs
        if last_tokens != self.bs:
            self.lru_tok -= (cnt == n) * (self.bs - last_tokens)
        return seen

    def _update(self, r: int, ids: I64, n: int, pv: I64, starts: I64, lens: I64, pos: I64,
                touched: dict[int, tuple[int, I64]]) -> None:
        """Move this request's blocks to it (top of the stack)."""
        for k in range(len(starts)):
            p = int(pv[k])
            if p < 0:
                continue
            a = int(starts[k])
            b = a + int(lens[k])
            self.masks[p][pos[a:b]] = False
            self.fen.add(p, -(b - a))
            self.owned_total -= b - a
        for p in touched:
            if not self.masks[p].any():
                del self.masks[p]
        self.masks[r] = np.ones(n, np.bool_)
        self.fen.add(r, n)
        self.owned_total += n
        self.last_req[ids] = r
        self.last_pos[ids] = self.ar[:n]

    def stats(self, ttl_arr: F64) -> CacheStats:
        """The figures, from the run records (vectorised, for every TTL)."""
        trace, bs, t = self.trace, self.bs, self.trace.arrival_s
        n_req = len(trace)
        if self.run_r:
            rr, rp = np.concatenate(self.run_r), np.concatenate(self.run_p)
            rl, rc = np.concatenate(self.run_len), np.concatenate(self.run_cmg)
        else:
            rr = rp = rl = np.zeros(0, np.int64)
            rc = np.zeros(0, np.float64)
        seen = rp >= 0
        gap = np.where(seen, t[rr] - t[np.maximum(rp, 0)], np.inf)
        last_req = self.last_req
        cnt_last: I64 = np.bincount(last_req[last_req >= 0], minlength=n_req).astype(np.int64)
        t_last = float(t[-1]) if n_req else 0.0
        span = t_last - (float(t[0]) if n_req else 0.0)
        # partial-token correction for runs ending at a request's last block
        last_run = np.ones(len(rr), np.bool_)
        if len(rr) > 1:
            last_run[:-1] = rr[1:] != rr[:-1]
        short: I64 = (bs - self.partial_tok[rr]) * last_run.astype(np.int64)
        m = len(ttl_arr)
        hit_b, hit_t, peak = (np.zeros(m, np.int64) for _ in range(3))
        mean, occ = np.zeros(m, np.float64), np.zeros(m, np.float64)
        cum_n = np.concatenate(([0], np.cumsum(self.n_distinct)))
        for i, ttl in enumerate(ttl_arr):
            hit_b[i], hit_t[i], peak[i], mean[i], occ[i] = _ttl_stats(
                ttl, t, rr, rp, rl, rc, gap, seen, short, bs, self.n_distinct, cum_n,
                cnt_last, t_last, span)
        inf_ok = rc < np.inf
        return CacheStats(
            requests=n_req, block_size=bs, distinct_blocks=trace.num_blocks,
            block_refs=int(self.n_distinct.sum()), token_refs=int(self.token_refs),
            span_s=span, session_time_s=_session_time(trace), ttls=ttl_arr,
            ttl_hit_blocks=hit_b, ttl_hit_tokens=hit_t, ttl_peak_blocks=peak,
            ttl_mean_blocks=mean, ttl_occupancy_block_s=occ,
            infinite_hit_blocks=int(rl[inf_ok].sum()),
            infinite_hit_tokens=int((rl[inf_ok] * bs - short[inf_ok]).sum()),
            lru_capacity_blocks=self.caps, lru_hit_blocks=self.lru_hits,
            lru_hit_tokens=self.lru_tok,
        )


def _ttl_stats(
    T: float, t: F64, rr: I64, rp: I64, rl: I64, rc: F64, gap: F64,
    seen: npt.NDArray[np.bool_], short: I64, bs: int, n_distinct: I64, cum_n: I64,
    cnt_last: I64, t_last: float, span: float,
) -> tuple[int, int, int, float, float]:
    n_req = len(t)
    hit = (rc <= T) & (rc < np.inf)
    hb = int(rl[hit].sum())
    ht = int((rl[hit] * bs - short[hit]).sum())
    refresh = seen & (gap <= T)
    ref_w = rl * refresh
    # H[k]: blocks of request k refreshed within T by a later request
    H = np.bincount(rp[refresh], weights=rl[refresh], minlength=n_req).astype(np.int64)
    C = np.cumsum(np.bincount(rr, weights=ref_w, minlength=n_req).astype(np.int64))
    # k0[r]: first request still live at r (t_r - t_k <= T), same arithmetic as the rule
    if np.isinf(T):
        k0 = np.zeros(n_req, np.int64)
    else:
        k0 = np.searchsorted(t, t - T, side="left").astype(np.int64)
        for _ in range(4):  # float rounding: settle on exactly "t_r - t_k <= T"
            back = (k0 > 0) & (t - t[np.maximum(k0 - 1, 0)] <= T)
            fwd = (k0 < np.arange(n_req)) & ~(t - t[np.minimum(k0, n_req - 1)] <= T)
            if not back.any() and not fwd.any():
                break
            k0 = k0 - back + fwd
    cumH = np.concatenate(([0], np.cumsum(H)))
    r_idx = np.arange(n_req)
    live = (cum_n[r_idx + 1] - cum_n[k0]) - C + cumH[k0]
    pk = int(live.max(initial=0))
    # live block-seconds: each refresh pair lives min(gap, T); the last touch of each
    # block lives min(T, t_last - t_k) (clipped) or T (unclipped)
    pair = float((rl[seen] * np.minimum(gap[seen], T)).sum())
    tail_clip = float((cnt_last * np.minimum(T, t_last - t)).sum()) if n_req else 0.0
    tail_full = float(cnt_last.sum() * T) if np.isfinite(T) else np.inf
    mn = (pair + tail_clip) / span if span > 0 else float(live[-1] if n_req else 0)
    return hb, ht, pk, mn, pair + tail_full


def _session_time(trace: Trace) -> float:
    if not len(trace):
        return 0.0
    s = trace.session
    k = int(s.max()) + 1
    lo = np.full(k, np.inf)
    hi = np.full(k, -np.inf)
    np.minimum.at(lo, s, trace.arrival_s)
    np.maximum.at(hi, s, trace.arrival_s)
    ok = np.isfinite(lo)
    return float((hi[ok] - lo[ok]).sum())
