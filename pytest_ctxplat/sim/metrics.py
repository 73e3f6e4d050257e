"""Prometheus metrics of the simulator, named and labelled like vLLM's.

Counters and gauges are read from the engine at scrape time (a custom collector);
the latency histograms are fed by an engine finish listener. Everything lives in a
private :class:`~prometheus_client.CollectorRegistry`, never the global one.

Exposed (counters get the ``_total`` suffix in the text format):

* counters ``vllm:prefix_cache_queries``, ``vllm:prefix_cache_hits``,
  ``vllm:prompt_tokens_cached``, ``vllm:prompt_tokens``, ``vllm:generation_tokens``,
  ``vllm:request_success`` (label ``finished_reason``), ``vllm:num_preemptions``,
  ``ctxplat_sim:kv_evicted_blocks``;
* with lower KV tiers: ``vllm:external_prefix_cache_queries`` / ``_hits`` (tokens),
  ``vllm:kv_offload_total_bytes{transfer_type="GPU_to_CPU"|"CPU_to_GPU"|...}``;
  always ``vllm:prompt_tokens_by_source{source=local_compute|local_cache_hit|
  external_kv_transfer}``;
* per tier (label ``tier``: ``hbm``, ``dram``, ...): ``ctxplat_sim:tier_hit_blocks``,
  ``_miss_blocks``, ``_evicted_blocks``, ``_expired_blocks``, ``_dropped_blocks``,
  ``_written_blocks`` (counters), ``ctxplat_sim:tier_load_seconds`` (read-link time
  spent loading blocks into HBM) and ``ctxplat_sim:tier_usage_perc`` (gauge);
  ``ctxplat_sim:kv_computed_blocks``, ``ctxplat_sim:kv_refill_blocks`` (blocks computed
  again after they had left every tier), ``ctxplat_sim:write_stall_seconds`` and
  ``ctxplat_sim:busy_seconds`` (model time);
* gauges ``vllm:kv_cache_usage_perc`` (fraction 0..1), ``vllm:num_requests_running``,
  ``vllm:num_requests_waiting``, ``vllm:cache_config_info`` (value 1, labels
  ``block_size``, ``num_gpu_blocks``, ...);
* histograms ``vllm:time_to_first_token_seconds``, ``vllm:e2e_request_latency_seconds``
  (in model time, as the usage fields ``ctxplat_model_*_ms`` report it).

All but ``cache_config_info`` carry the labels ``model_name`` and ``engine`` (the
engine's name: ``"0"``, or one per replica when several engines share the metrics).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pytest_ctxplat.sim.engine import Engine
from pytest_ctxplat.sim.request import Request

__all__ = ["CONTENT_TYPE", "SimMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
_E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
_LABELS = ["model_name", "engine"]


class _EngineCollector(Collector):
    def __init__(self, engines: Sequence[Engine]) -> None:
        self.engines = list(engines)

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for engine in self.engines:
            for m in self._collect(engine):
                if m.name in families:
                    families[m.name].samples.extend(m.samples)
                else:
                    families[m.name] = m
        yield from families.values()

    def _collect(self, e: Engine) -> Iterator[Metric]:
        s = e.stats
        labels = [e.config.model, e.name]

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            m = CounterMetricFamily(name, doc, labels=_LABELS)
            m.add_metric(labels, value)
            return m

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            m = GaugeMetricFamily(name, doc, labels=_LABELS)
            m.add_metric(labels, value)
            return m

        yield counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            s.prefix_cache_queries,
        )
        yield counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            s.prefix_cache_hits,
        )
        yield counter(
            "vllm:prompt_tokens_cached",
            "Number of cached prompt tokens (local prefix cache).",
            s.prompt_tokens_cached,
        )
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", s.prompt_tokens)
        yield counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", s.generation_tokens
        )
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=[*_LABELS, "finished_reason"],
        )
        success.add_metric([*labels, "length"], s.request_success)
        yield success
        yield counter(
            "vllm:num_preemptions", "Cumulative number of preemptions.", s.num_preemptions
        )
        yield counter(
            "ctxplat_sim:kv_evicted_blocks",
            "KV blocks evicted from the prefix cache (LRU).",
            e.kv_evicted_blocks,
        )
        yield gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            e.kv_cache_usage,
        )
        yield gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            e.num_running,
        )
        yield gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            e.num_waiting,
        )
        yield from _tier_metrics(e, labels)
        c = e.config
        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=["block_size", "cache_dtype", "enable_prefix_caching", "num_gpu_blocks"],
        )
        info.add_metric([str(c.block_size), "auto", "True", str(c.num_kv_blocks)], 1.0)
        yield info


def _tier_metrics(e: Engine, labels: list[str]) -> Iterator[Metric]:
    s = e.stats
    bs = e.config.block_size
    by_source = CounterMetricFamily(
        "vllm:prompt_tokens_by_source", "Prompt tokens by where their KV came from.",
        labels=[*_LABELS, "source"])
    for source, value in (("local_compute", s.tokens_local_compute),
                          ("local_cache_hit", s.tokens_local_hit),
                          ("external_kv_transfer", s.tokens_external)):
        by_source.add_metric([*labels, source], value)
    yield by_source
    tiers = e.tiers.tiers
    if tiers:
        for name, doc, value in (
            ("vllm:external_prefix_cache_queries",
             "External prefix cache queries (KV connector), in tokens.", s.external_queries),
            ("vllm:external_prefix_cache_hits",
             "External prefix cache hits (KV connector), in tokens.", s.external_hits),
        ):
            m = CounterMetricFamily(name, doc, labels=_LABELS)
            m.add_metric(labels, value)
            yield m
        offload = CounterMetricFamily(
            "vllm:kv_offload_total_bytes", "KV bytes moved between tiers.",
            labels=[*_LABELS, "transfer_type"])
        for kind, value in sorted(e.tiers.transfer_bytes.items()):
            offload.add_metric([*labels, kind], value)
        yield offload
    hbm = e.cache.counters
    hbm_hits = s.prefix_cache_hits // bs
    rows: dict[str, list[tuple[str, float]]] = {
        "hit_blocks": [("hbm", hbm_hits)], "miss_blocks": [("hbm", s.hbm_query_blocks - hbm_hits)],
        "evicted_blocks": [("hbm", hbm.evicted_blocks)],
        "expired_blocks": [("hbm", hbm.expired_blocks)],
        "dropped_blocks": [], "written_blocks": [],
    }
    usage = [("hbm", e.cache.num_cached_blocks / e.cache.num_blocks)]
    for t in tiers:
        c = t.counters
        for key, count in (("hit_blocks", c.hits), ("miss_blocks", c.misses),
                           ("evicted_blocks", c.evictions), ("expired_blocks", c.expirations),
                           ("dropped_blocks", c.drops), ("written_blocks", c.writes)):
            rows[key].append((t.name, count))
        usage.append((t.name, t.usage))
    for key, values in rows.items():
        fam = CounterMetricFamily(f"ctxplat_sim:tier_{key}", f"KV blocks ({key}) per tier.",
                                  labels=[*_LABELS, "tier"])
        for tier, n in values:
            fam.add_metric([*labels, tier], n)
        yield fam
    loads = CounterMetricFamily("ctxplat_sim:tier_load_seconds",
                                "Read-link time spent loading KV blocks into HBM, per tier "
                                "(model seconds).", labels=[*_LABELS, "tier"])
    for t in tiers:
        loads.add_metric([*labels, t.name], t.counters.load_s)
    yield loads
    g = GaugeMetricFamily("ctxplat_sim:tier_usage_perc",
                          "Fraction of each tier holding cached blocks.",
                          labels=[*_LABELS, "tier"])
    for tier, frac in usage:
        g.add_metric([*labels, tier], frac)
    yield g
    for name, doc, amount in (
        ("ctxplat_sim:kv_computed_blocks", "Full KV blocks computed (prefill or decode).",
         s.computed_blocks),
        ("ctxplat_sim:kv_refill_blocks",
         "KV blocks computed again after they had left every tier.", s.refill_blocks),
        ("ctxplat_sim:write_stall_seconds", "Model seconds steps waited for tier writes.",
         s.stall_s),
        ("ctxplat_sim:busy_seconds", "Model seconds the engine spent in steps.", s.busy_s),
    ):
        fam = CounterMetricFamily(name, doc, labels=_LABELS)
        fam.add_metric(labels, amount)
        yield fam


class SimMetrics:
    """The metrics of one engine (or of several: ``engines``) in a private registry."""

    def __init__(self, engine: Engine, engines: Sequence[Engine] | None = None) -> None:
        self.engine = engine
        self.engines = list(engines) if engines is not None else [engine]
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EngineCollector(self.engines))
        label_values = (engine.config.model, "0")
        self._ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            _LABELS,
            registry=self.registry,
            buckets=_TTFT_BUCKETS,
        ).labels(*label_values)
        self._e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of end to end request latency in seconds.",
            _LABELS,
            registry=self.registry,
            buckets=_E2E_BUCKETS,
        ).labels(*label_values)
        for e in self.engines:
            e.finish_listeners.append(self._on_finish)

    def _on_finish(self, req: Request) -> None:
        # model time (what the model takes at speedup 1), like the usage fields
        ttft_ms, e2e_ms = req.model_times_ms()
        if ttft_ms is not None:
            self._ttft.observe(ttft_ms / 1000.0)
        if e2e_ms is not None:
            self._e2e.observe(e2e_ms / 1000.0)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
