"""The cumulative counters of a simulated engine (what its metrics report)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EngineStats"]


@dataclass
class EngineStats:
    """Cumulative counters (tokens unless noted), as vLLM's metrics count them."""

    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    prompt_tokens: int = 0
    prompt_tokens_cached: int = 0
    generation_tokens: int = 0
    request_success: int = 0
    num_preemptions: int = 0
    num_aborted: int = 0
    num_steps: int = 0
    # KV tiers below HBM (vLLM's "external" / connector figures)
    external_queries: int = 0
    external_hits: int = 0
    tokens_local_compute: int = 0
    tokens_local_hit: int = 0
    tokens_external: int = 0
    computed_blocks: int = 0
    hbm_query_blocks: int = 0
    refill_blocks: int = 0
    stall_s: float = 0.0
    busy_s: float = 0.0
