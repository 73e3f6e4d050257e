"""Helpers for the simulator's finding tests: scaled-down profiles and workloads.

Scale: 64-token blocks (a quarter of the per-block work of vLLM's 16), HBM of 64k
tokens, DRAM of 256k, NVMe and the slow store of 4M; agent-like sessions of 9k-24k
tokens. The shapes of the findings do not depend on the scale.
"""

from __future__ import annotations

from typing import Any

from pytest_ctxplat.api import simulate
from pytest_ctxplat.report.result import RunResult
from pytest_ctxplat.sim.hardware import HardwareProfile, load_hardware
from pytest_ctxplat.workload.sessions import LongSessions

BLOCK = 64
HBM, DRAM, BIG = 64_000, 256_000, 4_000_000
TIER_PROFILES = {
    "hbm": "h100-llama8b",
    "dram": "h100-llama8b-dram",
    "nvme": "h100-llama8b-nvme",
    "slow": "h100-llama8b-slowstore",
}


def tier_profile(kind: str, **extra: Any) -> HardwareProfile:
    """One of the four tier configurations of finding (c), scaled down."""
    overrides: dict[str, Any] = {"scheduler.block_size": BLOCK, "tiers.0.capacity_tokens": HBM}
    if kind != "hbm":
        overrides["tiers.1.capacity_tokens"] = DRAM
    if kind in ("nvme", "slow"):
        overrides["tiers.2.capacity_tokens"] = BIG
    overrides.update(extra)
    return load_hardware(TIER_PROFILES[kind], overrides)


def agent_sessions(users: int, duration_s: float, **extra: Any) -> LongSessions:
    """Busy agent sessions: 9k-24k-token contexts, 5-20 s between turns."""
    fields: dict[str, Any] = dict(
        users=users, duration_s=duration_s, block_size=BLOCK, shared_prefix_tokens=1024,
        initial_tokens=8000, turn_tokens_min=500, turn_tokens_max=1500,
        max_context_tokens=24_000, output_tokens=100, think_min_s=5.0, think_max_s=20.0,
        start_spread_s=10.0)
    fields.update(extra)
    return LongSessions(**fields)


def counters(result: RunResult) -> dict[str, float]:
    assert result.server is not None
    out: dict[str, float] = result.server.figures.get("sim_counters", {})
    return out


def run(spec: LongSessions, profile: HardwareProfile) -> RunResult:
    result = simulate(spec, profile)
    assert result.metrics["errors"] == 0, result.errors_sample
    return result
