"""Where each tier runs out: a ``tier_spill`` workload played at growing working sets,
and the knee of each KV tier.

The points are sized from the server's capacity: the tier capacities of a simulator
profile, or HBM from ``vllm:cache_config_info`` (``num_gpu_blocks`` x ``block_size``),
at ``multiples`` of each tier's capacity plus a quarter of the first tier (the plateau).
At each point the requests after the first (filling) cycle are measured: their hit rate,
TTFT p50/p95, and the hit rate per tier (the simulator's ``ctxplat_sim:tier_hit_blocks``
counters, or vLLM's ``prompt_tokens_by_source``: ``local_cache_hit`` is ``hbm``,
``external_kv_transfer`` is ``external``).

The rule: a tier's *reach* is the hit rate served by that tier and every faster one. Its
plateau is the reach at the smallest working set; the tier has run out at the first
working set where the reach falls below ``drop_share`` (0.9) x the plateau. Its knee is
the largest working set measured before that point (a lower bound when it never falls:
then ``dropped`` is false). TTFT p95 of the measured requests has its own knee: the
largest working set before it rises past ``ttft_rise`` (2) x its plateau. The knee of
``hbm`` is the observed ``knee_tokens.hbm`` that ``knee_min_tokens`` gates on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..config import FieldError, Validated, build, replace, setting
from ..errors import ConfigError
from ..report.records import RequestRecord
from ..report.result import RunResult
from ..sim.hardware import HardwareProfile
from ..slo import SLOSpec, evaluate
from ..workload.spec import WorkloadSpec
from ..workload.tierspill import fill_session

__all__ = ["KneeSpec", "knee_points", "knee_result", "knee_spec", "plan_knees",
           "profile_capacities", "run_knees", "tier_knees"]

_TIER_HITS = "ctxplat_sim:tier_hit_blocks_total{tier="
_SOURCES = {"local_cache_hit": "hbm", "external_kv_transfer": "external"}
NO_TIER_FIGURES = ("no hit figures per tier: the server reports neither the simulator's "
                   "ctxplat_sim:tier_hit_blocks nor vllm:prompt_tokens_by_source")


@dataclasses.dataclass(frozen=True, kw_only=True)
class KneeSpec(Validated):
    """How a knee search is sized and judged."""

    working_sets: tuple[int, ...] = setting((), gt=0, doc="working sets to play, in "
                                            "tokens (default: from the capacities)")
    multiples: tuple[float, ...] = setting((0.5, 0.8, 1.25, 2.0), gt=0, doc="of each "
                                           "tier's capacity, the points played")
    capacities: dict[str, int] = dataclasses.field(default_factory=dict)
    drop_share: float = setting(0.9, gt=0, lt=1, doc="a tier has run out when its reach "
                                "falls below this share of its plateau")
    ttft_rise: float = setting(2.0, gt=1, doc="TTFT p95 has turned when it passes this "
                               "multiple of its plateau")

    def validate(self) -> None:
        for tier, tokens in self.capacities.items():
            if not isinstance(tokens, int) or tokens <= 0:
                raise FieldError(f"capacities.{tier}", f"must be a positive number of "
                                                       f"tokens, not {tokens!r}")
        if not self.working_sets and not self.capacities:
            raise FieldError("working_sets", "give working_sets=[tokens, ...] or the "
                                             "capacities of the tiers")

    def points(self) -> list[int]:
        """The working sets to play, smallest first."""
        if self.working_sets:
            return sorted(set(self.working_sets))
        caps = list(self.capacities.values())
        sizes = {round(caps[0] * 0.25)} | {round(m * c) for c in caps for m in self.multiples}
        return sorted(s for s in sizes if s > 0)


def knee_spec(values: Mapping[str, Any], where: str) -> KneeSpec:
    """A :class:`KneeSpec` from keywords (errors name ``where`` and the key)."""
    return build(KneeSpec, values, where)


def profile_capacities(profile: HardwareProfile) -> dict[str, int]:
    """Tier name -> capacity in tokens of a simulator profile (HBM first)."""
    return {t.name: t.capacity_tokens for t in profile.tiers}


def plan_knees(spec: WorkloadSpec, knees: KneeSpec, name: str
               ) -> list[tuple[int, WorkloadSpec, str]]:
    """Each point's working set, workload and run name (``NAME[working_set=65536]``)."""
    if "working_set_tokens" not in spec.field_names():
        raise ConfigError(f"{name}: workload kind {spec.kind!r} has no working_set_tokens; "
                          "find knees with tier_spill")
    out = []
    for ws in knees.points():
        point = replace(spec, {"working_set_tokens": ws}, f"{name}: working set {ws}")
        out.append((ws, point, f"{name}[working_set={ws}]"))
    return out


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _tier_tokens(r: RunResult) -> tuple[dict[str, float], str]:
    """Hit tokens per tier over the run, and where they were read from."""
    figures = r.server.figures if r.server is not None else {}
    counters: Mapping[str, float] = figures.get("sim_counters") or {}
    bs = r.target.get("server_block_size")
    tiers = {k[len(_TIER_HITS):].rstrip("}"): v for k, v in counters.items()
             if k.startswith(_TIER_HITS)}
    if tiers and isinstance(bs, int):
        return {t: v * bs for t, v in tiers.items()}, "ctxplat_sim:tier_hit_blocks"
    by_source: Mapping[str, float] = figures.get("prompt_tokens_by_source") or {}
    found = {_SOURCES[s]: v for s, v in by_source.items() if s in _SOURCES}
    if found:
        return found, "vllm:prompt_tokens_by_source"
    return {}, "none"


def _point(ws: int, r: RunResult) -> dict[str, Any]:
    steady: list[RequestRecord] = [x for x in r.records
                                   if x.ok and not fill_session(x.session_id)]
    prompt = sum(x.prompt_tokens for x in steady)
    cached = [x.cached_tokens for x in steady if x.cached_tokens is not None]
    ttft = [x.ttft_s * 1e3 for x in steady if x.ttft_s is not None]
    tokens, source = _tier_tokens(r)
    return {
        "working_set_tokens": ws,
        "requests": len(r.records),
        "measured_requests": len(steady),
        "hit_rate": sum(cached) / prompt if prompt and cached else None,
        "tier_hit_rates": {t: v / prompt for t, v in tokens.items()} if prompt else {},
        "tier_source": source,
        "ttft_p50_ms": _pct(ttft, 50),
        "ttft_p95_ms": _pct(ttft, 95),
        "hit_rate_designed": r.hit_rates.designed,
        "hit_rate_request": r.hit_rates.request,
        "hit_rate_server": r.hit_rates.server,
    }


def knee_points(working_sets: Sequence[int], results: Sequence[RunResult]
                ) -> list[dict[str, Any]]:
    """The figures of each point (see the module docstring)."""
    return [_point(ws, r) for ws, r in zip(working_sets, results, strict=True)]


def _turn(points: Sequence[Mapping[str, Any]], values: Sequence[float | None],
          crossed: Callable[[float, float], bool]) -> dict[str, Any]:
    """The last working set before ``crossed(value, plateau)`` first holds."""
    plateau = values[0]
    if plateau is None:
        return {"knee_tokens": None, "note": "not measured at the smallest working set"}
    held = points[0]["working_set_tokens"]
    for p, v in zip(points, values, strict=True):
        if v is not None and crossed(v, plateau):
            return {"knee_tokens": held, "first_turned_tokens": p["working_set_tokens"],
                    "plateau": plateau, "dropped": True}
        held = p["working_set_tokens"]
    return {"knee_tokens": held, "first_turned_tokens": None, "plateau": plateau,
            "dropped": False, "note": f"held at every working set measured (up to {held} "
                                      "tokens): the knee is at least that"}


def tier_knees(points: Sequence[Mapping[str, Any]], knees: KneeSpec) -> dict[str, Any]:
    """The knee of each tier and of TTFT p95 over ``points`` (smallest first)."""
    tiers: list[str] = []
    for tier in [*knees.capacities, *(t for p in points for t in p["tier_hit_rates"])]:
        if tier not in tiers:
            tiers.append(tier)
    out: dict[str, Any] = {}
    for i, tier in enumerate(tiers):
        reach = [sum(p["tier_hit_rates"].get(t, 0.0) for t in tiers[:i + 1])
                 if p["tier_hit_rates"] else None for p in points]
        if reach[0] is None:
            out[tier] = {"knee_tokens": None, "note": NO_TIER_FIGURES}
            continue
        if not reach[0]:
            out[tier] = {"knee_tokens": None, "note": "the tier served no hits at the "
                                                      "smallest working set"}
            continue
        out[tier] = _turn(points, reach, lambda v, top: v < knees.drop_share * top)
    ttft = _turn(points, [p["ttft_p95_ms"] for p in points],
                 lambda v, top: v > knees.ttft_rise * top)
    return {"tiers": out, "ttft": ttft}


def knee_result(name: str, knees: KneeSpec, working_sets: Sequence[int],
                results: Sequence[RunResult], slo: SLOSpec | None) -> RunResult:
    """One result of a knee search: the smallest point's figures, the ``knees``
    section, the observed ``knee_tokens.TIER`` and the verdict against ``slo``."""
    points = knee_points(working_sets, results)
    found = tier_knees(points, knees)
    rep = results[0]
    observed: dict[str, float | None] = {k: v for k, v in rep.observed.items()
                                         if not k.startswith("knee_tokens.")}
    notes: dict[str, str] = dict(rep.hit_rates.notes)
    for tier, k in found["tiers"].items():
        observed[f"knee_tokens.{tier}"] = k["knee_tokens"]
        if k["knee_tokens"] is None:
            notes[f"knee_tokens.{tier}"] = k["note"]
    if "knee_tokens.hbm" not in observed:
        observed["knee_tokens.hbm"] = None
        notes["knee_tokens.hbm"] = NO_TIER_FIGURES
    observed["knee_tokens.ttft"] = found["ttft"]["knee_tokens"]
    section = {
        "rule": {"drop_share": knees.drop_share, "ttft_rise": knees.ttft_rise},
        "capacities": dict(knees.capacities),
        "points": points,
        **found,
    }
    incomplete = next((r.incomplete for r in results if r.incomplete), None)
    verdict = None if slo is None else evaluate(slo, observed, notes, incomplete)
    return dataclasses.replace(rep, name=name, observed=observed, slo=slo, verdict=verdict,
                               knees=section, incomplete=incomplete)


async def run_knees(spec: WorkloadSpec, knees: KneeSpec, slo: SLOSpec | None, name: str,
                    play_point: Callable[[WorkloadSpec, str], Awaitable[RunResult]]
                    ) -> RunResult:
    """Play ``spec`` once per working set with ``play_point(spec, name)`` and combine."""
    plan = plan_knees(spec, knees, name)
    results = [await play_point(point, point_name) for _, point, point_name in plan]
    return knee_result(name, knees, [ws for ws, _, _ in plan], results, slo)
