"""Context-platform analysis: TTL and LRU cache behaviour of traces and workloads,
working sets, tier sizing and the cost of a caching policy.

>>> from pytest_ctxplat.analysis import analyze, load_sources
>>> a = analyze(load_sources(["traces/"]), ttls=[60, 300, 3600])  # doctest: +SKIP
>>> a.to_dict()["ttl"]["300"]["block_hit_rate"]                   # doctest: +SKIP
"""

from .analyze import DEFAULT_TTLS, Analysis, TierPlan, analyze, ttl_key
from .engine import CacheStats, simulate
from .pricing import PriceTable, cost_of_policy, load_price_tables, price_table
from .profiles import MODEL_PROFILES, ModelProfile, model_profile
from .sources import load_sources, trace_from_workload

__all__ = [
    "DEFAULT_TTLS",
    "MODEL_PROFILES",
    "Analysis",
    "CacheStats",
    "ModelProfile",
    "PriceTable",
    "TierPlan",
    "analyze",
    "cost_of_policy",
    "load_price_tables",
    "load_sources",
    "model_profile",
    "price_table",
    "simulate",
    "trace_from_workload",
    "ttl_key",
]
