"""PNG plots of run results and cache analyses (matplotlib, the ``plots`` extra).

Every function takes plain dicts (a run's result JSON, an analysis JSON) and returns PNG
bytes, so the HTML report and ``ctxplat analyze --plots`` share them. matplotlib is
imported lazily with the non-interactive Agg backend.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ExtraMissing

__all__ = [
    "PlotsUnavailable",
    "hit_rates_over_time",
    "knee_curves",
    "latency_over_time",
    "lru_curve",
    "missing",
    "throughput_curves",
    "throughput_vs_users",
    "ttl_curves",
]


class PlotsUnavailable(ExtraMissing):
    """matplotlib (the ``plots`` extra) is not installed."""


INSTALL_HINT = "plots need matplotlib: pip install 'pytest-ctxplat[plots]'"


def _plt() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotsUnavailable(INSTALL_HINT) from exc
    return plt


def missing() -> str | None:
    """Why plots cannot be drawn here (matplotlib missing: the extra to install), or
    None when they can. Callers that can do without plots check this first and say so
    instead of failing."""
    try:
        _plt()
    except PlotsUnavailable as exc:
        return str(exc)
    return None


def _twin_legend(ax: Any, ax2: Any, **kwargs: Any) -> None:
    """One legend for a chart with a second y axis: both axes' lines, on ``ax``."""
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, **kwargs)


def _png(fig: Any) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _ok(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in records if r.get("error") is None and r.get("ttft_s") is not None]


def decode_tps(r: Mapping[str, Any]) -> float | None:
    """Output tokens per second after the first token, for one record."""
    out = r.get("output_tokens") or 0
    if out < 2 or r.get("end_s") is None:
        return None
    dt = r["end_s"] - r["start_s"] - r["ttft_s"]
    return (out - 1) / dt if dt > 0 else None


def latency_over_time(run: Mapping[str, Any]) -> bytes:
    """TTFT (ms) and decode speed (tokens/s) of each request against its start time."""
    plt = _plt()
    recs = _ok(run.get("records") or [])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    xs = [r["start_s"] for r in recs]
    ax1.scatter(xs, [r["ttft_s"] * 1000 for r in recs], s=8, alpha=0.6, color="tab:blue")
    ax1.set_ylabel("TTFT (ms)")
    ax1.set_title("TTFT and decode speed over time")
    ax1.grid(alpha=0.3)
    pts = [(r["start_s"], v) for r in recs if (v := decode_tps(r)) is not None]
    ax2.scatter([p[0] for p in pts], [p[1] for p in pts], s=8, alpha=0.6, color="tab:green")
    ax2.set_ylabel("decode speed (tokens/s)")
    ax2.set_xlabel("request start (s since run start)")
    ax2.grid(alpha=0.3)
    if not recs:
        ax1.text(0.5, 0.5, "no successful requests", ha="center", transform=ax1.transAxes)
    return _png(fig)


def hit_rates_over_time(run: Mapping[str, Any]) -> bytes:
    """Cumulative designed, request-reported and server-reported hit rates over time."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    recs = sorted(_ok(run.get("records") or []), key=lambda r: r.get("end_s") or 0)
    prompt = designed = cached = 0.0
    xs: list[float] = []
    d_rate: list[float] = []
    c_rate: list[float] = []
    for r in recs:
        prompt += r.get("prompt_tokens") or 0
        designed += r.get("designed_cached_tokens") or 0
        cached += r.get("cached_tokens") or 0
        if prompt:
            xs.append(r["end_s"])
            d_rate.append(designed / prompt)
            c_rate.append(cached / prompt)
    if xs:
        ax.plot(xs, d_rate, label="designed", color="tab:gray", linestyle="--")
        ax.plot(xs, c_rate, label="request (cached_tokens)", color="tab:blue")
    tl = run.get("timeline") or []
    sx = [p["t"] for p in tl if p.get("prefix_cache_queries")]
    sy = [p["prefix_cache_hits"] / p["prefix_cache_queries"] for p in tl
          if p.get("prefix_cache_queries")]
    if sx:
        ax.plot(sx, sy, label="server (/metrics)", color="tab:orange")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("cumulative hit rate")
    ax.set_xlabel("time (s since run start)")
    ax.set_title("hit rates over time")
    ax.grid(alpha=0.3)
    if xs or sx:
        ax.legend(loc="lower right")
    return _png(fig)


def _workload_key(run: Mapping[str, Any]) -> str:
    """A run's workload with every setting but ``users``, and its server profile: runs
    that share it differ only in load, so a line through them reads as a sweep."""
    wl = {k: v for k, v in (run.get("workload") or {}).items() if k != "users"}
    profile = (run.get("target") or {}).get("profile")
    return repr((sorted((k, repr(v)) for k, v in wl.items()), profile))


def throughput_curves(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The series of the throughput-against-users chart: one per workload and server
    profile through its fixed-user runs (``kind: runs``), one per sweep of users
    (``sweep``), and each capacity run's sustained users (``capacity``). Each has a
    ``label`` and ``points`` [(users, output tokens/s)] sorted by users."""
    groups: dict[str, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for run in runs:
        name = str(run.get("name") or "run")
        profile = str((run.get("target") or {}).get("profile") or "unknown")
        cap = run.get("capacity") or {}
        if run.get("sweep"):
            pts = [(float(p["users"]), float(p["output_tokens_per_s"])) for p in run["sweep"]
                   if p.get("users") is not None and p.get("output_tokens_per_s") is not None]
            if pts:
                out.append({"kind": "sweep", "label": f"sweep {_short(name)} on {profile}",
                            "points": sorted(pts)})
            continue
        if cap:
            if cap.get("sustained_users") and cap.get("output_tokens_per_s") is not None:
                out.append({"kind": "capacity",
                            "label": f"capacity {_short(name)} on {profile}",
                            "points": [(float(cap["sustained_users"]),
                                        float(cap["output_tokens_per_s"]))]})
            continue
        tps = (run.get("metrics") or {}).get("output_tokens_per_s")
        wl = run.get("workload") or {}
        closed = (wl.get("load") or {}).get("arrival", "closed") == "closed"
        if tps is None or wl.get("users") is None or not closed:
            continue
        group = groups.setdefault(_workload_key(run), {
            "kind": "runs", "label": f"{wl.get('kind', 'workload')} on {profile}",
            "first": name, "points": []})
        group["points"].append((float(wl["users"]), float(tps)))
    series = list(groups.values())
    labels = [g["label"] for g in series]
    for g in series:  # one workload kind in several shapes: name each by its first run
        if labels.count(g["label"]) > 1:
            g["label"] += f" ({_short(g['first'])})"
        del g["first"]
        g["points"].sort()
    return series + out


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


def throughput_vs_users(runs: Sequence[Mapping[str, Any]]) -> bytes:
    """Output tokens/s against users (:func:`throughput_curves`): a line only through
    runs of one workload and server profile (a single run is a point), a line per
    sweep, a star per capacity run's sustained users."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    series = throughput_curves(runs)
    for i, s in enumerate(series):
        xs = [p[0] for p in s["points"]]
        ys = [p[1] for p in s["points"]]
        color = f"C{i % 10}"  # one color per series, lines and points alike
        if s["kind"] == "capacity":
            ax.scatter(xs, ys, marker="*", s=140, color=color, label=s["label"], zorder=3)
        elif len(xs) > 1:
            ax.plot(xs, ys, marker="o", linestyle="--" if s["kind"] == "sweep" else "-",
                    color=color, label=s["label"])
        else:
            ax.scatter(xs, ys, marker="o", color=color, label=s["label"], zorder=3)
    ax.set_xlabel("users")
    ax.set_ylabel("output tokens/s")
    ax.set_title("throughput against users, per workload and server profile")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no runs with users and throughput", ha="center",
                transform=ax.transAxes)
    return _png(fig)


def ttl_curves(analysis: Mapping[str, Any]) -> bytes:
    """Hit rates and working set against TTL (log scale)."""
    plt = _plt()
    curve = [p for p in analysis.get("ttl_curve") or []
             if p.get("ttl_s") is not None and math.isfinite(p["ttl_s"])]
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = [p["ttl_s"] for p in curve]
    ax.plot(xs, [p["block_hit_rate"] for p in curve], color="tab:blue", label="block hit rate")
    ax.plot(xs, [p["token_hit_rate"] for p in curve], color="tab:cyan", linestyle=":",
            label="token hit rate")
    inf = (analysis.get("infinite") or {}).get("block_hit_rate")
    if inf is not None:
        ax.axhline(inf, color="tab:gray", linestyle="--", label="infinite cache")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("TTL (s)")
    ax.set_ylabel("hit rate")
    ax2 = ax.twinx()
    gb = analysis.get("model") is not None and curve and "peak_working_set_gb" in curve[0]
    key, unit = ("_gb", "GB") if gb else ("_tokens", "tokens")
    ax2.plot(xs, [p["peak_working_set" + key] for p in curve], color="tab:red",
             label=f"peak working set ({unit})")
    ax2.plot(xs, [p["mean_working_set" + key] for p in curve], color="tab:orange",
             label=f"mean working set ({unit})")
    ax2.set_ylabel(f"working set ({unit})")
    for t in (analysis.get("ttl") or {}):
        if t != "inf":
            ax.axvline(float(t), color="black", alpha=0.15)
    _twin_legend(ax, ax2, loc="center right", fontsize=8)
    ax.set_title(f"{analysis.get('name', 'trace')}: TTL curves")
    ax.grid(alpha=0.3)
    return _png(fig)


def lru_curve(analysis: Mapping[str, Any]) -> bytes:
    """Hit rate against LRU capacity."""
    plt = _plt()
    pts = analysis.get("lru") or []
    fig, ax = plt.subplots(figsize=(8, 3.6))
    gb = bool(pts) and "capacity_gb" in pts[0]
    xs = [p["capacity_gb"] if gb else p["capacity_tokens"] for p in pts]
    ax.plot(xs, [p["block_hit_rate"] for p in pts], marker="o", label="block hit rate")
    inf = (analysis.get("infinite") or {}).get("block_hit_rate")
    if inf is not None:
        ax.axhline(inf, color="tab:gray", linestyle="--", label="infinite cache")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("LRU capacity (GB)" if gb else "LRU capacity (tokens)")
    ax.set_ylabel("hit rate")
    ax.set_title(f"{analysis.get('name', 'trace')}: LRU hit rate against capacity")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _png(fig)


def knee_curves(run: Mapping[str, Any]) -> bytes:
    """A knee search (a result's ``knees``): hit rate per tier (stacked) and TTFT p95
    against the working set (log scale), a dotted line at each tier's capacity and a
    dashed one at each tier's knee."""
    plt = _plt()
    knees = run.get("knees") or {}
    points = knees.get("points") or []
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = [p["working_set_tokens"] for p in points]
    tiers = list(knees.get("tiers") or {})
    below = [0.0] * len(points)
    for i, tier in enumerate(tiers):
        top = [b + ((p.get("tier_hit_rates") or {}).get(tier) or 0.0)
               for b, p in zip(below, points, strict=True)]
        ax.fill_between(xs, below, top, step=None, alpha=0.35, color=f"C{i}",
                        label=f"hits from {tier}")
        below = top
    ax.plot(xs, [p.get("hit_rate") for p in points], marker="o", color="black",
            label="hit rate (cached_tokens)")
    for i, (tier, cap) in enumerate((knees.get("capacities") or {}).items()):
        ax.axvline(cap, color=f"C{i}", linestyle=":", alpha=0.8)
        knee = ((knees.get("tiers") or {}).get(tier) or {}).get("knee_tokens")
        if knee:
            ax.axvline(knee, color=f"C{i}", linestyle="--", label=f"{tier} knee")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("working set (tokens); dotted: tier capacities")
    ax.set_ylabel("hit rate of the later cycles")
    ax2 = ax.twinx()
    ax2.plot(xs, [p.get("ttft_p95_ms") for p in points], color="tab:red", marker="s",
             label="TTFT p95 (ms)")
    ax2.set_ylabel("TTFT p95 (ms)")
    _twin_legend(ax, ax2, loc="center left", fontsize=7)
    ax.set_title(f"{run.get('name', 'run')}: where each tier runs out")
    ax.grid(alpha=0.3)
    return _png(fig)
