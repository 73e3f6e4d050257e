"""Prometheus metrics of the simulator, named and labelled like vLLM's.

Counters and gauges are read from the engine at scrape time (a custom collector);
the latency histograms are fed by an engine finish listener. Everything lives in a
private :class:`~prometheus_client.CollectorRegistry`, never the global one.

Exposed (counters get the ``_total`` suffix in the text format):

* counters ``vllm:prefix_cache_queries``, ``vllm:prefix_cache_hits``,
  ``vllm:prompt_tokens_cached``, ``vllm:prompt_tokens``, ``vllm:generation_tokens``,
  ``vllm:request_success`` (label ``finished_reason``), ``vllm:num_preemptions``,
  ``ctxplat_sim:kv_evicted_blocks``;
* gauges ``vllm:kv_cache_usage_perc`` (fraction 0..1), ``vllm:num_requests_running``,
  ``vllm:num_requests_waiting``, ``vllm:cache_config_info`` (value 1, labels
  ``block_size``, ``num_gpu_blocks``, ...);
* histograms ``vllm:time_to_first_token_seconds``, ``vllm:e2e_request_latency_seconds``.

All but ``cache_config_info`` carry the labels ``model_name`` and ``engine="0"``.
"""

from __future__ import annotations

from collections.abc import Iterator

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
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        e = self.engine
        s = e.stats
        labels = [e.config.model, "0"]

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
        c = e.config
        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=["block_size", "cache_dtype", "enable_prefix_caching", "num_gpu_blocks"],
        )
        info.add_metric([str(c.block_size), "auto", "True", str(c.num_kv_blocks)], 1.0)
        yield info


class SimMetrics:
    """The metrics of one engine in a private registry."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EngineCollector(engine))
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
        engine.finish_listeners.append(self._on_finish)

    def _on_finish(self, req: Request) -> None:
        if req.first_token_time is not None:
            self._ttft.observe(req.first_token_time - req.arrival_time)
        if req.finish_time is not None:
            self._e2e.observe(req.finish_time - req.arrival_time)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
