"""Server metrics: parsing Prometheus text, old and new vLLM names, run deltas."""

from __future__ import annotations

import pytest

from pytest_ctxplat.servers.scrape import parse_metrics, server_delta

NEW = """# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{{engine="0",model_name="m"}} {q}
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{{engine="0",model_name="m"}} {h}
# TYPE vllm:external_prefix_cache_queries counter
vllm:external_prefix_cache_queries_total{{engine="0",model_name="m"}} {eq}
# TYPE vllm:external_prefix_cache_hits counter
vllm:external_prefix_cache_hits_total{{engine="0",model_name="m"}} {eh}
# TYPE vllm:prompt_tokens_by_source counter
vllm:prompt_tokens_by_source_total{{engine="0",model_name="m",source="local_compute"}} {lc}
vllm:prompt_tokens_by_source_total{{engine="0",model_name="m",source="external_kv_transfer"}} {ek}
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="m"}} {u}
"""
OLD = """# TYPE vllm:gpu_prefix_cache_queries counter
vllm:gpu_prefix_cache_queries_total{{model_name="m"}} {q}
# TYPE vllm:gpu_prefix_cache_hits counter
vllm:gpu_prefix_cache_hits_total{{model_name="m"}} {h}
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{{model_name="m"}} {u}
"""


def test_new_names_give_local_and_external_rates_and_sources() -> None:
    before = parse_metrics(NEW.format(q=100, h=10, eq=50, eh=5, lc=90, ek=5, u=0.1))
    after = parse_metrics(NEW.format(q=1100, h=810, eq=350, eh=305, lc=390, ek=305, u=0.4))
    d = server_delta(before, after, {"vllm:kv_cache_usage_perc": 0.9})
    assert d["prefix_hit_rate"] == pytest.approx(0.8)
    assert d["external_hit_rate"] == pytest.approx(1.0)
    assert d["prompt_tokens_by_source"] == {"local_compute": 300.0,
                                            "external_kv_transfer": 300.0}
    assert d["kv_cache_usage_perc_max"] == pytest.approx(0.9)


def test_old_gpu_prefix_names_are_accepted() -> None:
    d = server_delta(parse_metrics(OLD.format(q=0, h=0, u=0.0)),
                     parse_metrics(OLD.format(q=400, h=100, u=0.5)))
    assert d["prefix_hit_rate"] == pytest.approx(0.25)
    assert d["kv_cache_usage_perc_max"] == pytest.approx(0.5)


def test_no_prefix_metrics_gives_no_rate_and_a_note() -> None:
    empty = parse_metrics("# TYPE other counter\nother_total 1\n")
    d = server_delta(empty, empty)
    assert d["prefix_hit_rate"] is None
    assert "no vllm:prefix_cache_queries" in d["note"]
