"""Where a run's prompt-cache hits came from: hits per KV tier, read from ``/metrics``.

One adapter per engine turns two metric snapshots into a :class:`TierHits`: prompt
tokens served from each tier, the tier's hit rate (of all prompt tokens), and bytes
loaded and load time where the server reports them. The engine is told by what the
``/metrics`` text contains. Tier names per engine (:data:`TIER_NAMES`):

* simulator (``ctxplat_sim:tier_hit_blocks{tier=...}`` x block size): the profile's
  tiers, ``hbm`` first, then e.g. ``dram``, ``nvme``; bytes loaded from
  ``vllm:kv_offload_total_bytes{transfer_type="<TIER>_to_GPU"}``;
* vLLM (``vllm:prompt_tokens_cached_by_source{source=...}``, vLLM 0.32: ``device`` ->
  ``hbm``, ``host`` -> ``dram``, ``disk`` -> ``disk``, ``p2p`` and
  ``external_unspecified`` (a connector that does not name its tier) -> ``external``;
  else ``vllm:prompt_tokens_by_source``: ``local_cache_hit`` -> ``hbm``,
  ``external_kv_transfer`` -> ``external``); bytes loaded per tier from
  ``vllm:kv_offload_total_bytes{transfer_type="CPU_to_GPU"}`` (``dram``);
* SGLang HiCache (``sglang:cached_tokens_total{cache_source=device|host|storage}`` over
  ``sglang:prompt_tokens_total``): ``hbm``, ``dram``, ``storage``;
* NVIDIA Dynamo KVBM (``kvbm_onboard_blocks_h2d`` / ``kvbm_onboard_blocks_d2d`` x
  block size over the worker's ``vllm:prompt_tokens_total``; ``hbm`` from the worker's
  ``vllm:prefix_cache_hits``): ``hbm``, ``dram``, ``disk``.

Several endpoints (replicas, prefill and decode workers, a KV store) are merged with
:func:`~pytest_ctxplat.servers.scrape.merge_snapshots` first, so counters are summed
per tier across them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..slo import ALL_TIER_NAMES, TIER_NAMES
from .scrape import MetricsSnapshot, merge_snapshots

__all__ = ["ALL_TIER_NAMES", "TIER_NAMES", "TierFigures", "TierHits", "merge_snapshots",
           "tier_hits"]

# vLLM ``source`` label values -> tier. ``vllm:prompt_tokens_cached_by_source`` (vLLM
# 0.32, vllm/v1/metrics/cache_hit_source.py): device, host, p2p (from another vLLM
# instance), disk, external_unspecified (a connector that does not say: e.g. the example
# disk connector); ``vllm:prompt_tokens_by_source``: local_cache_hit, external_kv_transfer
_VLLM_SOURCES = {"device": "hbm", "host": "dram", "disk": "disk", "p2p": "external",
                 "external_unspecified": "external",
                 "local_cache_hit": "hbm", "gpu": "hbm", "local": "hbm",
                 "cpu": "dram", "cpu_offload": "dram",
                 "external_kv_transfer": "external", "external": "external",
                 "connector": "external"}
_SGLANG_SOURCES = {"device": "hbm", "host": "dram", "storage": "storage"}
_DEFAULT_BLOCK = 16


@dataclass(frozen=True)
class TierFigures:
    """One tier over one run: prompt tokens it served, their share of all prompt tokens,
    and bytes loaded from it / seconds spent loading (None: not reported)."""

    tokens: float
    hit_rate: float | None
    bytes_loaded: float | None = None
    load_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "hit_rate": self.hit_rate,
                "bytes_loaded": self.bytes_loaded, "load_s": self.load_s}


@dataclass(frozen=True)
class TierHits:
    """Hits per tier of one run. ``engine`` is the adapter used (``sim``, ``vllm``,
    ``sglang``, ``dynamo``; ``unknown`` when the metrics attribute nothing, then
    ``note`` says why)."""

    engine: str
    prompt_tokens: float = 0.0
    tiers: Mapping[str, TierFigures] = field(default_factory=dict)
    external_hit_rate: float | None = None
    note: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        """The tier names this engine documents."""
        return TIER_NAMES.get(self.engine, ())

    def observed(self) -> dict[str, float | None]:
        """Observed metrics ``tier_hit_rate.<tier>`` and ``external_hit_rate``."""
        out: dict[str, float | None] = {f"tier_hit_rate.{name}": t.hit_rate
                                        for name, t in self.tiers.items()}
        out["external_hit_rate"] = self.external_hit_rate
        return out

    def missing_note(self, tier: str) -> str:
        """Why ``tier``'s hit rate is not measured."""
        if self.engine == "unknown":
            return f"the server cannot attribute hits to a tier ({self.note})"
        if tier not in self.names and tier not in self.tiers:
            return (f"tier {tier!r} is not a {self.engine} tier; valid: "
                    f"{', '.join(self.names)}")
        reported = ", ".join(self.tiers) or "none"
        if self.engine == "sim":
            return f"the simulated deployment has no {tier!r} tier (tiers: {reported})"
        return (f"the {self.engine} server did not attribute hits to tier {tier!r} "
                f"(tiers reported: {reported})" + (f"; {self.note}" if self.note else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "prompt_tokens": self.prompt_tokens,
                "external_hit_rate": self.external_hit_rate, "note": self.note or None,
                "tiers": {k: v.to_dict() for k, v in self.tiers.items()}}


def tier_hits(before: MetricsSnapshot, after: MetricsSnapshot) -> TierHits:
    """Hits per tier over a run, by the adapter that matches the metrics."""
    keys = after.values.keys()
    if any(k.startswith("ctxplat_sim:tier_hit_blocks") for k in keys):
        return _sim(before, after)
    if any(k.startswith("sglang:cached_tokens") for k in keys):
        return _sglang(before, after)
    if any(k.startswith("kvbm_") for k in keys):
        return _dynamo(before, after)
    if any(k.startswith(("vllm:prompt_tokens_by_source", "vllm:prompt_tokens_cached_by_source"))
           for k in keys):
        return _vllm(before, after)
    return TierHits("unknown", note="its /metrics has no per-tier counters (vLLM "
                                    "prompt_tokens_by_source, SGLang cached_tokens by "
                                    "cache_source, Dynamo kvbm_*, simulator tier_*)")


def _d(before: MetricsSnapshot, after: MetricsSnapshot, *names: str) -> float:
    """Delta of the first of ``names`` present (``x`` or ``x_total``)."""
    for name in names:
        for key in (name, name + "_total"):
            if after.has(key):
                return after.get(key) - before.get(key)
    return 0.0


def _by_label(before: MetricsSnapshot, after: MetricsSnapshot, metric: str,
              label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in after.values:
        if key.startswith(metric + "{") and f"{label}=" in key:
            value = key.split(f"{label}=")[1].split(",")[0].rstrip("}")
            out[value] = out.get(value, 0.0) + after.get(key) - before.get(key)
    return out


def _rate(n: float, of: float) -> float | None:
    return n / of if of > 0 else None


def _external(before: MetricsSnapshot, after: MetricsSnapshot) -> float | None:
    return _rate(_d(before, after, "vllm:external_prefix_cache_hits"),
                 _d(before, after, "vllm:external_prefix_cache_queries"))


def _build(engine: str, prompt: float, tokens: Mapping[str, float],
           loaded: Mapping[str, float] | None = None, external: float | None = None,
           note: str = "", load_s: Mapping[str, float] | None = None) -> TierHits:
    loaded = loaded or {}
    load_s = load_s or {}
    tiers = {name: TierFigures(n, _rate(n, prompt), loaded.get(name), load_s.get(name))
             for name, n in tokens.items()}
    if prompt <= 0:
        note = (note + "; " if note else "") + "no prompt tokens counted"
    return TierHits(engine, prompt, tiers, external, note)


def _loaded_bytes(before: MetricsSnapshot, after: MetricsSnapshot) -> dict[str, float]:
    """``vllm:kv_offload_total_bytes{transfer_type=X_to_GPU}`` per tier (CPU -> dram)."""
    out: dict[str, float] = {}
    moved = _by_label(before, after, "vllm:kv_offload_total_bytes_total", "transfer_type")
    for kind, n in moved.items():
        src, _, dst = kind.partition("_to_")
        if dst == "GPU":
            name = {"CPU": "dram"}.get(src, src.lower())
            out[name] = out.get(name, 0.0) + n
    return out


def _sim(before: MetricsSnapshot, after: MetricsSnapshot) -> TierHits:
    block = after.block_size() or _DEFAULT_BLOCK
    blocks = _by_label(before, after, "ctxplat_sim:tier_hit_blocks_total", "tier")
    tokens = {t: n * block for t, n in blocks.items()}
    load_s = _by_label(before, after, "ctxplat_sim:tier_load_seconds_total", "tier")
    return _build("sim", _d(before, after, "vllm:prompt_tokens"), tokens,
                  _loaded_bytes(before, after), _external(before, after), load_s=load_s)


def _vllm(before: MetricsSnapshot, after: MetricsSnapshot) -> TierHits:
    by_source = _by_label(before, after, "vllm:prompt_tokens_cached_by_source_total",
                          "source") or \
        _by_label(before, after, "vllm:prompt_tokens_by_source_total", "source")
    tokens: dict[str, float] = {}
    unmapped = []
    for source, n in by_source.items():
        tier = _VLLM_SOURCES.get(source.lower())
        if tier is None:
            if source != "local_compute":
                unmapped.append(source)
            continue
        tokens[tier] = tokens.get(tier, 0.0) + n
    prompt = _d(before, after, "vllm:prompt_tokens") or sum(by_source.values())
    note = f"sources not mapped to a tier: {', '.join(unmapped)}" if unmapped else ""
    loaded = _loaded_bytes(before, after)
    if "external" in tokens and "dram" not in tokens and loaded:
        loaded = {"external": sum(loaded.values())}  # the connector's loads
    return _build("vllm", prompt, tokens, loaded,
                  _external(before, after), note)


def _sglang(before: MetricsSnapshot, after: MetricsSnapshot) -> TierHits:
    by_source = _by_label(before, after, "sglang:cached_tokens_total", "cache_source")
    tokens: dict[str, float] = {}
    for source, n in by_source.items():
        tier = _SGLANG_SOURCES.get(source, source)
        tokens[tier] = tokens.get(tier, 0.0) + n
    note = "" if by_source else "sglang:cached_tokens has no cache_source label (no HiCache)"
    return _build("sglang", _d(before, after, "sglang:prompt_tokens"), tokens, note=note)


def _dynamo(before: MetricsSnapshot, after: MetricsSnapshot) -> TierHits:
    block = after.block_size()
    note = "" if block else f"block size not reported; {_DEFAULT_BLOCK} assumed"
    block = block or _DEFAULT_BLOCK
    tokens = {"hbm": _d(before, after, "vllm:prefix_cache_hits"),
              "dram": _d(before, after, "kvbm_onboard_blocks_h2d") * block,
              "disk": _d(before, after, "kvbm_onboard_blocks_d2d") * block}
    if not any(k.startswith("vllm:prefix_cache_hits") for k in after.values):
        del tokens["hbm"]
    return _build("dynamo", _d(before, after, "vllm:prompt_tokens"), tokens,
                  _loaded_bytes(before, after), _external(before, after), note)
