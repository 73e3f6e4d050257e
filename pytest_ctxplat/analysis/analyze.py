"""``analyze``: TTL and LRU hit rates, working sets, tier sizing and cost of a trace.

The result's :meth:`Analysis.to_dict` is the ``ctxplat analyze --json`` document; its
shape is documented in ``docs/reference/analysis.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..catalog import ModelSpec
from ..workload.traces import Trace
from .pricing import PriceTable, cost_of_policy
from .replay import CacheStats, lru_grid, replay_cache

__all__ = ["DEFAULT_TTLS", "Analysis", "TierPlan", "analyze", "block_figures", "ttl_key"]

DEFAULT_TTLS = (60.0, 300.0, 3600.0)
TTL_GRID = tuple(float(x) for x in np.unique(np.round(np.geomspace(1, 7 * 86400, 49), 1)))


def ttl_key(ttl: float) -> str:
    return "inf" if math.isinf(ttl) else f"{ttl:g}"


@dataclass(frozen=True)
class TierPlan:
    """Tier sizes for ``users`` concurrent users at a target block hit rate.

    Method: the tiers form one hierarchy by reuse time. A block reused within
    ``hbm_ttl_s`` is served from HBM, within ``dram_ttl_s`` from DRAM, and within the
    smallest TTL that reaches the target hit rate (``target_ttl_s``) from NVMe. The
    capacity a TTL needs per user is its live block-seconds over the trace divided by the
    summed session time (first to last request of each session), i.e. the mean working
    set of one active user, expiry tails included. Each tier is the difference between
    consecutive TTL working sets, times ``users``.
    """

    users: int
    target_block_hit_rate: float
    reachable: bool
    target_ttl_s: float | None
    hbm_ttl_s: float
    dram_ttl_s: float
    per_user_tokens: dict[str, float]
    tokens: dict[str, float]
    gb: dict[str, float] | None
    hit_rate_by_tier: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "reuse-time tiers (see docs/reference/analysis.md)",
            "users": self.users, "target_block_hit_rate": self.target_block_hit_rate,
            "reachable": self.reachable, "target_ttl_s": self.target_ttl_s,
            "hbm_ttl_s": self.hbm_ttl_s, "dram_ttl_s": self.dram_ttl_s,
            "per_user_tokens": self.per_user_tokens, "tokens": self.tokens, "gb": self.gb,
            "cumulative_block_hit_rate": self.hit_rate_by_tier,
        }


@dataclass(frozen=True)
class Analysis:
    name: str
    stats: CacheStats
    ttls: tuple[float, ...]
    input_tokens: int
    output_tokens: int
    sessions: int
    model: ModelSpec | None
    lru_points: list[dict[str, float]]
    ttl: dict[str, dict[str, float]]
    ttl_curve: list[dict[str, float]]
    tiers: TierPlan | None
    cost: dict[str, Any] | None = None
    sources: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)
    odd_records: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return self.stats.requests

    @property
    def distinct_blocks(self) -> int:
        return self.stats.distinct_blocks

    @property
    def block_refs(self) -> int:
        return self.stats.block_refs

    @property
    def infinite(self) -> dict[str, float]:
        s = self.stats
        return {"block_hit_rate": _rate(s.infinite_hit_blocks, s.block_refs),
                "token_hit_rate": _rate(s.infinite_hit_tokens, s.token_refs)}

    def to_dict(self) -> dict[str, Any]:
        s = self.stats
        out: dict[str, Any] = {
            "schema": "ctxplat-analysis/1",
            "name": self.name,
            "sources": self.sources,
            "formats": self.formats,
            "requests": s.requests,
            "distinct_blocks": s.distinct_blocks,
            "block_size": s.block_size,
            "block_refs": s.block_refs,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "sessions": self.sessions,
            "span_s": s.span_s,
            "infinite": self.infinite,
            "ttl": self.ttl,
            "lru": self.lru_points,
            "ttl_curve": self.ttl_curve,
            "model": self.model.to_dict() if self.model else None,
            "tiers": self.tiers.to_dict() if self.tiers else None,
            "cost": self.cost,
            "odd_records": self.odd_records,
        }
        return out


def _rate(a: float, b: float) -> float:
    return float(a) / float(b) if b else 0.0


def block_figures(st: CacheStats, hit_blocks: float) -> dict[str, float]:
    """The block hit rate and the re-fills (misses per distinct block) of a replay in
    which ``hit_blocks`` block references hit (one TTL's, or the infinite cache's)."""
    return {"block_hit_rate": _rate(hit_blocks, st.block_refs),
            "misses_per_block": _rate(st.block_refs - hit_blocks, st.distinct_blocks)}


def analyze(
    trace: Trace,
    ttls: Sequence[float] = DEFAULT_TTLS,
    *,
    lru_points: int = 10,
    model: ModelSpec | None = None,
    users: int | None = None,
    target_hit_rate: float | None = None,
    hbm_ttl_s: float = 30.0,
    dram_ttl_s: float = 300.0,
    prices: PriceTable | None = None,
    sources: Sequence[str] = (),
) -> Analysis:
    """Analyse ``trace`` for ``ttls`` (seconds), an LRU curve of ``lru_points`` points,
    tier sizing for ``users`` (when given) and the cost under ``prices`` (when given).

    ``target_hit_rate`` (block hit rate) defaults to 95% of the infinite-cache rate."""
    ttls = tuple(float(t) for t in ttls)
    for t in ttls:
        if not t > 0:
            raise ValueError(f"TTLs must be > 0 seconds, got {t!r}")
    if users is not None and users <= 0:
        raise ValueError(f"users must be > 0, got {users}")
    if target_hit_rate is not None and not 0 < target_hit_rate <= 1:
        raise ValueError(f"target hit rate must be in (0, 1], got {target_hit_rate}")
    if lru_points < 2:
        raise ValueError(f"lru_points must be >= 2, got {lru_points}")
    all_ttls = sorted({*ttls, *TTL_GRID, hbm_ttl_s, dram_ttl_s})
    st = replay_cache(trace, all_ttls, lru_capacities=lru_grid(trace.num_blocks))
    bs = st.block_size
    idx = {float(t): i for i, t in enumerate(st.ttls)}

    def ttl_row(t: float) -> dict[str, float]:
        i = idx[t]
        blocks = block_figures(st, st.ttl_hit_blocks[i])
        row = {
            "block_hit_rate": blocks["block_hit_rate"],
            "token_hit_rate": _rate(st.ttl_hit_tokens[i], st.token_refs),
            "peak_working_set_tokens": int(st.ttl_peak_blocks[i]) * bs,
            "mean_working_set_tokens": float(st.ttl_mean_blocks[i]) * bs,
            "misses_per_block": blocks["misses_per_block"],
        }
        if model is not None:
            row["peak_working_set_gb"] = model.gb(row["peak_working_set_tokens"])
            row["mean_working_set_gb"] = model.gb(row["mean_working_set_tokens"])
        return row

    ttl_out = {ttl_key(t): ttl_row(t) for t in ttls}
    curve = [{"ttl_s": float(t), **ttl_row(float(t))} for t in st.ttls]
    lru = _lru_points(st, lru_points, model)
    input_tokens = int(trace.input_tokens.sum())
    output_tokens = int(trace.output_tokens.sum())
    n_sessions = len(np.unique(trace.session)) if len(trace) else 0
    tiers = None
    if users is not None:
        tiers = _tiers(st, users, target_hit_rate, hbm_ttl_s, dram_ttl_s, model, n_sessions)
    cost = None
    if prices is not None:
        per_ttl = {}
        for t in ttls:
            i = idx[t]
            per_ttl[ttl_key(t)] = cost_of_policy(
                prices, ttl_s=t, hit_tokens=int(st.ttl_hit_tokens[i]),
                block_tokens=st.token_refs, input_tokens=input_tokens,
                output_tokens=output_tokens)
        cost = {"table": prices.to_dict(), "ttl": per_ttl}
    return Analysis(trace.name, st, ttls, input_tokens, output_tokens, n_sessions, model,
                    lru, ttl_out, curve, tiers, cost, list(sources), list(trace.formats),
                    trace.odd_report())


def _lru_points(st: CacheStats, points: int, model: ModelSpec | None) -> list[dict[str, float]]:
    caps = st.lru_capacity_blocks
    rates = st.lru_hit_blocks / st.block_refs if st.block_refs else np.zeros(len(caps))
    # from the first capacity reaching 1% of the best rate to the first reaching it
    top = rates.max(initial=0.0)
    nz = np.flatnonzero(rates >= 0.01 * top) if top > 0 else np.zeros(0, np.int64)
    lo = int(caps[nz[0]]) if len(nz) else 1
    hi = int(caps[np.flatnonzero(rates >= top - 1e-12)[0]]) if len(caps) else 1
    hi = max(hi, lo)
    want = np.geomspace(lo, hi, points) if hi > lo else np.array([lo])
    pick = np.unique(np.searchsorted(caps, want, side="left").clip(0, len(caps) - 1))
    out = []
    for i in pick:
        row = {"capacity_tokens": int(caps[i]) * st.block_size,
               "block_hit_rate": float(rates[i]),
               "token_hit_rate": _rate(st.lru_hit_tokens[i], st.token_refs)}
        if model is not None:
            row["capacity_gb"] = model.gb(row["capacity_tokens"])
        out.append(row)
    return out


def _tiers(st: CacheStats, users: int, target: float | None, hbm_ttl: float,
           dram_ttl: float, model: ModelSpec | None, n_sessions: int) -> TierPlan:
    rates = st.ttl_hit_blocks / st.block_refs if st.block_refs else np.zeros(len(st.ttls))
    inf_rate = _rate(st.infinite_hit_blocks, st.block_refs)
    goal = target if target is not None else 0.95 * inf_rate
    finite = np.isfinite(st.ttls)
    ok = np.flatnonzero(finite & (rates >= goal - 1e-12))
    reachable = len(ok) > 0
    t_star = float(st.ttls[ok[0]]) if reachable else float(st.ttls[finite][-1])
    idx = {float(t): i for i, t in enumerate(st.ttls)}
    denom = st.session_time_s

    def per_user(t: float) -> float:
        i = idx[t]
        if denom > 0:
            return float(st.ttl_occupancy_block_s[i]) / denom * st.block_size
        return float(st.ttl_peak_blocks[i]) * st.block_size / max(1, n_sessions)

    h = min(hbm_ttl, t_star)
    d = min(max(dram_ttl, h), t_star)
    w_h, w_d, w_t = per_user(h), per_user(d), per_user(t_star)
    per = {"hbm": w_h, "dram": max(0.0, w_d - w_h), "nvme": max(0.0, w_t - w_d)}
    per["total"] = per["hbm"] + per["dram"] + per["nvme"]
    tokens = {k: v * users for k, v in per.items()}
    gb = {k: model.gb(v) for k, v in tokens.items()} if model is not None else None
    served = {"hbm": float(rates[idx[h]]), "hbm+dram": float(rates[idx[d]]),
              "hbm+dram+nvme": float(rates[idx[t_star]])}
    return TierPlan(users, goal, reachable, t_star if reachable else None, hbm_ttl, dram_ttl,
                    per, tokens, gb, served)
