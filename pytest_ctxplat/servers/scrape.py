"""Server-side metrics: scrape Prometheus ``/metrics`` and take deltas over a run.

Parsing uses ``prometheus_client``'s text parser. Samples are summed over labels that
only identify the server (``model_name``, ``engine``), so one figure per metric remains;
the ``source`` / ``transfer_type`` / ``tier`` labels are kept. Old vLLM names
(``vllm:gpu_prefix_cache_*``) are mapped to the current ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["TTFT_HISTOGRAM", "MetricsSnapshot", "histogram_delta", "label", "merge_snapshots",
           "parse_metrics", "scrape", "scrape_all", "server_delta"]

_RENAMES = {
    "vllm:gpu_prefix_cache_queries_total": "vllm:prefix_cache_queries_total",
    "vllm:gpu_prefix_cache_hits_total": "vllm:prefix_cache_hits_total",
    "vllm:gpu_cache_usage_perc": "vllm:kv_cache_usage_perc",
}
_KEPT_LABELS = ("source", "transfer_type", "tier", "block_size", "num_gpu_blocks",
                "cache_source", "le")
TTFT_HISTOGRAM = "vllm:time_to_first_token_seconds"


@dataclass(frozen=True)
class MetricsSnapshot:
    """Sample name (with kept labels, e.g. ``name{source=x}``) -> value."""

    values: Mapping[str, float] = field(default_factory=dict)

    def get(self, name: str, default: float = 0.0) -> float:
        return self.values.get(name, default)

    def has(self, name: str) -> bool:
        return name in self.values

    def with_prefix(self, prefix: str) -> dict[str, float]:
        return {k: v for k, v in self.values.items() if k.startswith(prefix)}

    def block_size(self) -> int | None:
        """The KV block size in ``vllm:cache_config_info{block_size=...}`` (None: absent)."""
        return self._config_int("block_size")

    def gpu_capacity_tokens(self) -> int | None:
        """HBM's KV capacity in tokens, ``num_gpu_blocks`` x ``block_size`` of
        ``vllm:cache_config_info`` (None: absent)."""
        bs = self.block_size()
        blocks = self._config_int("num_gpu_blocks") if bs else None
        return None if blocks is None or not bs else blocks * bs

    def _config_int(self, name: str) -> int | None:
        """Integer label ``name`` of ``vllm:cache_config_info`` (None: absent or not an
        integer)."""
        for key in self.with_prefix("vllm:cache_config_info"):
            value = label(key, name)
            if value is not None:
                try:
                    return int(value)
                except ValueError:
                    return None
        return None


def label(key: str, name: str) -> str | None:
    """The value of label ``name`` in a snapshot key (``metric{a=x,b=y}``, as
    :func:`parse_metrics` writes it); None when the key has no such label."""
    _, brace, labels = key.partition("{")
    if not brace:
        return None
    for item in labels.rstrip("}").split(","):
        k, eq, value = item.partition("=")
        if eq and k == name:
            return value
    return None


def parse_metrics(text: str) -> MetricsSnapshot:
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = _RENAMES.get(sample.name, sample.name)
            kept = [f"{k}={sample.labels[k]}" for k in _KEPT_LABELS if k in sample.labels]
            key = f"{name}{{{','.join(kept)}}}" if kept else name
            values[key] = values.get(key, 0.0) + float(sample.value)
    return MetricsSnapshot(values)


async def scrape(client: httpx.AsyncClient, base_url: str) -> MetricsSnapshot | None:
    """GET ``/metrics``; None when the server has none (404, connection error, bad text)."""
    try:
        resp = await client.get(base_url.rstrip("/") + "/metrics", timeout=5.0)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    try:
        return parse_metrics(resp.text)
    except ValueError:
        return None


# counter and histogram samples are summed across endpoints; gauges keep the largest
_SUMMED = ("_total", "_count", "_sum", "_bucket")


def merge_snapshots(snapshots: Iterable[MetricsSnapshot]) -> MetricsSnapshot:
    """One snapshot of several endpoints: counters summed, gauges at their largest."""
    values: dict[str, float] = {}
    for snap in snapshots:
        for key, value in snap.values.items():
            if key in values and not key.split("{")[0].endswith(_SUMMED):
                values[key] = max(values[key], value)
            else:
                values[key] = values.get(key, 0.0) + value
    return MetricsSnapshot(values)


async def scrape_all(client: httpx.AsyncClient, base_url: str,
                     extra: Sequence[str] = ()) -> MetricsSnapshot | None:
    """The server's ``/metrics`` merged with those of ``extra`` endpoints (replicas,
    prefill and decode workers, a KV store; a base URL or a full ``.../metrics`` URL).
    None when the server itself has none; an extra endpoint that does not answer is
    left out."""
    main = await scrape(client, base_url)
    if main is None or not extra:
        return main
    others = [await scrape(client, u.removesuffix("/metrics")) for u in extra]
    return merge_snapshots([main, *(o for o in others if o is not None)])


def histogram_delta(before: MetricsSnapshot, after: MetricsSnapshot, name: str
                    ) -> tuple[float, float, list[tuple[float, float]]] | None:
    """``(count, sum, [(upper bound, cumulative count), ...])`` of histogram ``name``
    over a run (deltas of two snapshots); None when the server does not expose it."""
    if not after.has(f"{name}_count"):
        return None
    prefix = f"{name}_bucket{{"
    buckets = []
    for key, value in after.values.items():
        le = label(key, "le") if key.startswith(prefix) else None
        if le is not None:
            try:
                bound = float(le)
            except ValueError:
                continue
            buckets.append((bound, value - before.get(key)))
    count = after.get(f"{name}_count") - before.get(f"{name}_count")
    return count, after.get(f"{name}_sum") - before.get(f"{name}_sum"), sorted(buckets)


def _rate(hits: float, queries: float) -> float | None:
    return hits / queries if queries > 0 else None


def _labelled_delta(before: MetricsSnapshot, after: MetricsSnapshot, metric: str,
                    label: str) -> dict[str, float]:
    """Deltas of ``metric`` per value of ``label`` (e.g. per ``source``)."""
    prefix = f"{metric}{{"
    out: dict[str, float] = {}
    for key in after.values:
        if key.startswith(prefix) and f"{label}=" in key:
            value = key.split(f"{label}=")[1].split(",")[0].rstrip("}")
            out[value] = out.get(value, 0.0) + after.get(key) - before.get(key)
    return out


def server_delta(
    before: MetricsSnapshot, after: MetricsSnapshot, peaks: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """Figures of one run from two snapshots: counters as deltas, gauges as peaks."""

    def d(name: str) -> float:
        return after.get(name) - before.get(name)

    q = d("vllm:prefix_cache_queries_total")
    h = d("vllm:prefix_cache_hits_total")
    eq = d("vllm:external_prefix_cache_queries_total")
    eh = d("vllm:external_prefix_cache_hits_total")
    out: dict[str, Any] = {
        "prefix_cache_queries": q,
        "prefix_cache_hits": h,
        "prefix_hit_rate": _rate(h, q),
        "external_prefix_cache_queries": eq,
        "external_prefix_cache_hits": eh,
        "external_hit_rate": _rate(eh, eq),
        "prompt_tokens": d("vllm:prompt_tokens_total"),
        "generation_tokens": d("vllm:generation_tokens_total"),
        "prompt_tokens_cached": d("vllm:prompt_tokens_cached_total"),
        "preemptions": d("vllm:num_preemptions_total"),
    }
    if q <= 0 and not after.has("vllm:prefix_cache_queries_total"):
        out["note"] = "server exposes no vllm:prefix_cache_queries metric"
    for metric, label, key in (
        ("vllm:prompt_tokens_by_source_total", "source", "prompt_tokens_by_source"),
        ("vllm:kv_offload_total_bytes_total", "transfer_type", "kv_offload_bytes"),
        ("vllm:prompt_tokens_cached_by_source_total", "source", "prompt_tokens_cached_by_source"),
    ):
        by_label = _labelled_delta(before, after, metric, label)
        if by_label:
            out[key] = by_label
    sim_counters = {k: after.get(k) - before.get(k) for k in after.values
                    if k.startswith("ctxplat_sim:") and ("_total{" in k or k.endswith("_total"))}
    if sim_counters:
        out["sim_counters"] = sim_counters
    peaks = dict(peaks or {})
    for gauge in (
        "vllm:kv_cache_usage_perc",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
    ):
        short = gauge.split(":", 1)[1] + "_max"
        out[short] = max(peaks.get(gauge, 0.0), after.get(gauge), before.get(gauge))
    return out
