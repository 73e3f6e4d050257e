"""Fidelity points: published measurements the simulator is held against.

A points file is a YAML list; each point names a built-in profile (with optional dotted
``profile_set`` overrides), a request shape, how the requests are sent and which metric
was published::

    - id: A1
      source: "vLLM blog ..., fig. 1"
      profile: h100-llama8b
      profile_set: {tp: 4}           # optional
      prompt_tokens: 10000
      output_tokens: 2
      requests: 1
      concurrency: 1                 # closed loop; requests <= concurrency: all at once
      kv_from: none                  # none | dram | nvme: the prompts' KV starts there
      kv_fraction: 1.0               # share of requests (several) or of prompt blocks (one)
      metric: ttft_ms_mean
      published: 263

:func:`load_points` validates a file through the config layer (errors name the file,
line and key); :func:`simulate_point` plays one point on the virtual clock (one engine,
in process, every prompt distinct) and returns the metric; :func:`run_points` does all
of them and gives one row per point (``id``, ``metric``, ``published``, ``simulated``,
``ratio`` = simulated / published, ``source``, ``fitted``). Nothing is fitted here.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_ctxplat.config import Validated, build, read_yaml, setting
from pytest_ctxplat.errors import ConfigError
from pytest_ctxplat.sim.config import SimConfig
from pytest_ctxplat.sim.engine import Engine
from pytest_ctxplat.sim.hardware import HardwareProfile, load_hardware
from pytest_ctxplat.sim.request import Request, RequestState
from pytest_ctxplat.sim.virtual import VirtualClock, run_virtual

__all__ = ["KV_ORDERS", "KV_SOURCES", "METRICS", "FidelityPoint", "format_table", "load_points",
           "run_points", "simulate_point", "summary"]

METRICS = ("ttft_ms_mean", "e2e_ms_mean", "tpot_ms_mean", "prefill_tokens_per_s",
           "output_tokens_per_s", "requests_per_s")
KV_SOURCES = ("none", "dram", "nvme")
KV_ORDERS = ("spread", "first")
Tweak = Callable[[HardwareProfile], HardwareProfile]


@dataclass(frozen=True, kw_only=True)
class FidelityPoint(Validated):
    """One published measurement and the run that reproduces it."""

    id: str = setting(non_empty=True, doc="a short name, unique in the file")
    source: str = setting("", doc="where the figure was published")
    profile: str = setting(non_empty=True, doc="a built-in simulator profile or YAML file")
    profile_set: dict[str, Any] | None = setting(None, doc="dotted profile overrides")
    prompt_tokens: int = setting(gt=0, doc="tokens per prompt")
    output_tokens: int = setting(gt=0, doc="tokens generated per request")
    requests: int = setting(1, ge=1, doc="how many requests")
    concurrency: int = setting(1, ge=1, doc="requests in flight (closed loop)")
    kv_from: str = setting("none", choices=KV_SOURCES, doc="tier the prompts' KV starts in")
    kv_fraction: float = setting(1.0, ge=0, le=1, doc="share of requests (several) or of "
                                 "prompt blocks (one request) preloaded")
    kv_order: str = setting("spread", choices=KV_ORDERS, doc="several requests: where the "
                            "preloaded ones stand in the submission order (spread evenly, "
                            "or all first, as when the first share of the prompts warmed "
                            "the tier)")
    metric: str = setting(choices=METRICS, doc="the published metric")
    published: float = setting(gt=0, doc="the published value")
    fitted: bool = setting(False, doc="used by scripts/fit_sim_profiles.py")
    note: str = setting("", doc="anything a reader should know")


def load_points(path: str | Path) -> list[FidelityPoint]:
    """The points in YAML file ``path`` (a list of mappings), validated."""
    data, src = read_yaml(Path(path))
    if not isinstance(data, list) or not data:
        raise src.error("", "a points file holds a non-empty list of points")
    points = [build(FidelityPoint, item, src, str(i)) for i, item in enumerate(data)]
    seen: set[str] = set()
    for i, p in enumerate(points):
        if p.id in seen:
            raise src.error(f"{i}.id", f"{p.id!r} appears twice")
        seen.add(p.id)
    return points


@dataclass(slots=True)
class _Done:
    arrival: float
    first: float
    finish: float


def _profile(point: FidelityPoint, tweak: Tweak | None) -> HardwareProfile:
    try:
        profile = load_hardware(point.profile, point.profile_set)
    except ConfigError as exc:
        raise ConfigError(f"point {point.id}: {exc}") from None
    if profile.replicas != 1 or profile.disaggregation is not None:
        raise ConfigError(f"point {point.id}: profile: a fidelity point times one engine; "
                          "set replicas: 1 and no disaggregation")
    return tweak(profile) if tweak is not None else profile


def _preloaded(point: FidelityPoint, i: int, prompt_blocks: int) -> int:
    """How many leading prompt blocks of request ``i`` start in ``kv_from``."""
    if point.kv_from == "none":
        return 0
    f = point.kv_fraction
    if point.requests == 1:
        return round(prompt_blocks * f)
    if point.kv_order == "first":
        return prompt_blocks if i < round(point.requests * f) else 0
    return prompt_blocks if int((i + 1) * f) > int(i * f) else 0


async def _play(point: FidelityPoint, profile: HardwareProfile) -> list[_Done]:
    engine = Engine(SimConfig(), clock=VirtualClock(), profile=profile)
    bs = profile.block_size
    n_blocks = (point.prompt_tokens + point.output_tokens) // bs
    prompt_blocks = point.prompt_tokens // bs
    tier = None
    if point.kv_from != "none":
        names = [t.name for t in engine.tiers.tiers]
        if point.kv_from not in names:
            raise ConfigError(f"point {point.id}: kv_from: profile {point.profile} has no "
                              f"{point.kv_from!r} tier", ", ".join(names) or "none")
        tier = engine.tiers.tiers[names.index(point.kv_from)]
    hashes = [[((i + 1) << 32) | j for j in range(n_blocks)] for i in range(point.requests)]
    if tier is not None:
        for i, hs in enumerate(hashes):
            for h in hs[:_preloaded(point, i, prompt_blocks)]:
                tier.insert(h, 0.0)
    done: list[_Done] = []
    todo = iter(range(point.requests))

    async def client() -> None:
        loop = asyncio.get_running_loop()
        for i in todo:
            finished: asyncio.Future[Request] = loop.create_future()

            def listener(req: Request, _now: float, fut: asyncio.Future[Request] = finished
                         ) -> None:
                if (req.finished or req.state is RequestState.ABORTED) and not fut.done():
                    fut.set_result(req)

            engine.submit_hashes(point.prompt_tokens, point.output_tokens, hashes[i],
                                 listener)
            req = await finished
            if not req.finished or req.first_token_time is None or req.finish_time is None:
                raise ConfigError(f"point {point.id}: the simulated request failed")
            done.append(_Done(req.arrival_time, req.first_token_time, req.finish_time))

    try:
        await asyncio.gather(*(client() for _ in range(min(point.concurrency,
                                                          point.requests))))
    finally:
        await engine.stop()
    return done


def _metric(point: FidelityPoint, done: Sequence[_Done]) -> float:
    span = max(d.finish for d in done) - min(d.arrival for d in done)
    m = point.metric
    if m == "ttft_ms_mean":
        return 1e3 * statistics.fmean(d.first - d.arrival for d in done)
    if m == "e2e_ms_mean":
        return 1e3 * statistics.fmean(d.finish - d.arrival for d in done)
    if m == "tpot_ms_mean":
        if point.output_tokens < 2:
            raise ConfigError(f"point {point.id}: metric: tpot_ms_mean needs "
                              "output_tokens >= 2")
        return 1e3 * statistics.fmean((d.finish - d.first) / (point.output_tokens - 1)
                                      for d in done)
    per = {"prefill_tokens_per_s": point.prompt_tokens,
           "output_tokens_per_s": point.output_tokens, "requests_per_s": 1}[m]
    return per * len(done) / span


def simulate_point(point: FidelityPoint, tweak: Tweak | None = None) -> float:
    """The point's metric, simulated on the virtual clock (``tweak`` changes the loaded
    profile first, e.g. to try other efficiency factors)."""
    profile = _profile(point, tweak)
    return _metric(point, run_virtual(_play(point, profile)))


def run_points(points: Sequence[FidelityPoint], tweak: Tweak | None = None
               ) -> list[dict[str, Any]]:
    """One row per point: id, metric, published, simulated, ratio, source, fitted."""
    rows = []
    for p in points:
        sim = simulate_point(p, tweak)
        rows.append({"id": p.id, "metric": p.metric, "published": p.published,
                     "simulated": round(sim, 4), "ratio": round(sim / p.published, 4),
                     "source": p.source, "fitted": p.fitted, "profile": p.profile})
    return rows


def summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Median ratio and the largest deviation from 1, over all rows."""
    ratios = [float(r["ratio"]) for r in rows]
    return {"points": len(ratios), "median_ratio": statistics.median(ratios),
            "max_abs_error": max(abs(x - 1) for x in ratios)}


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of ``rows`` and a summary line."""
    lines = [f"{'id':<6} {'metric':<22} {'published':>12} {'simulated':>12} {'ratio':>7}  "
             "fit"]
    for r in rows:
        lines.append(f"{r['id']:<6} {r['metric']:<22} {r['published']:>12,.1f} "
                     f"{r['simulated']:>12,.1f} {r['ratio']:>7.3f}  "
                     f"{'fitted' if r['fitted'] else 'held out'}")
    s = summary(rows)
    lines.append(f"{s['points']:.0f} points; median ratio {s['median_ratio']:.3f}; largest "
                 f"error {100 * s['max_abs_error']:.1f}%")
    return "\n".join(lines)

