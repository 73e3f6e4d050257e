"""Context-platform analysis: TTL and LRU cache behaviour of traces and workloads,
working sets, tier sizing and the cost of a caching policy.

>>> from pytest_ctxplat.analysis import analyze, load_sources
>>> a = analyze(load_sources(["traces/"]), ttls=[60, 300, 3600])  # doctest: +SKIP
>>> a.to_dict()["ttl"]["300"]["block_hit_rate"]                   # doctest: +SKIP
"""

from .analyze import DEFAULT_TTLS, Analysis, TierPlan, analyze, ttl_key
from .pricing import PriceTable, cost_of_policy, load_price_tables, price_table
from .replay import CacheStats, replay_cache
from .sources import designed_analysis, load_sources, trace_from_workload

__all__ = [
    "DEFAULT_TTLS",
    "Analysis",
    "CacheStats",
    "PriceTable",
    "TierPlan",
    "analyze",
    "cost_of_policy",
    "designed_analysis",
    "load_price_tables",
    "load_sources",
    "price_table",
    "replay_cache",
    "trace_from_workload",
    "ttl_key",
]
