"""KV tiers: assert where the hits come from, and find where each tier runs out.

A deployment with HBM, host DRAM and NVMe only differs from one with HBM alone once the
working set outgrows HBM. The ``tier_spill`` workload makes that happen on purpose: N
sessions, each with its own long prefix, re-sent in cycles; the working set is
``working_set_tokens``. Below HBM's capacity the later cycles hit in HBM, past it in
DRAM, past DRAM in NVMe, past NVMe not at all.

This file runs on the simulator in virtual time (seconds), with the tiers made small so
that every point is quick: 16k tokens of HBM, 64k of DRAM, 256k of NVMe. Against a real
server, use ``run_workload`` / ``find_knees(server=URL)``: HBM's capacity is then read
from ``vllm:cache_config_info``. The bare ``slo`` marker selects it with
``pytest -m slo``.
"""

import pytest

from pytest_ctxplat import find_knees, simulate

pytestmark = pytest.mark.slo

PROFILE = "h100-llama8b-nvme"  # HBM + DRAM + NVMe (see ctxplat simulate --list-profiles)
HBM, DRAM, NVME = 16_384, 65_536, 262_144
SMALL_TIERS = {"tiers.0.capacity_tokens": HBM, "tiers.1.capacity_tokens": DRAM,
               "tiers.2.capacity_tokens": NVME,
               "write_policy": "stall"}  # a slow tier's writes wait rather than drop
SPILL = {"prefix_tokens": 2048, "cycles": 3}


def spill(working_set_tokens, slo):
    """One run of ``tier_spill`` judged against ``slo``; ``check=True``: a missed
    objective raises SLOViolation with the verdict table (and the hits per tier)."""
    return simulate("tier_spill", PROFILE, profile_overrides=SMALL_TIERS,
                    overrides={**SPILL, "working_set_tokens": working_set_tokens},
                    name=f"tier_spill_{working_set_tokens}", slo=slo, check=True)


# -- Per-tier objectives ------------------------------------------------------------------
# The first of three cycles fills the cache, so at most two thirds of the prompt tokens
# can hit. tier_hit_rate_min asks for the least share of prompt tokens each tier served
# (the server's per-tier counters); in a test: @pytest.mark.slo(tier_hit_rate_min=...).

def test_a_working_set_inside_hbm_hits_in_hbm():
    result = spill(HBM // 2, {"tier_hit_rate_min": {"hbm": 0.3}})
    assert result.observed["tier_hit_rate.dram"] == 0.0  # nothing had to leave HBM


def test_a_working_set_past_hbm_hits_in_dram():
    result = spill(2 * HBM, {"tier_hit_rate_min": {"dram": 0.3}})
    assert result.observed["tier_hit_rate.hbm"] < 0.05  # cycled LRU: HBM keeps none of it


def test_a_working_set_past_dram_hits_in_nvme():
    spill(2 * DRAM, {"tier_hit_rate_min": {"nvme": 0.3}})


# -- The knees -----------------------------------------------------------------------------
# find_knees plays tier_spill at working sets sized from the tiers' capacities (a quarter
# of HBM, then half and twice each tier) and reports, per tier, the largest working set
# before that tier's hit rate dropped below 90% of its plateau. knee_min_tokens gates on
# HBM's knee; check=True raises SLOViolation with the table when it is missed.

def test_each_tier_runs_out_past_its_capacity():
    result = find_knees(profile=PROFILE, profile_overrides=SMALL_TIERS, overrides=SPILL,
                        knee_options={"multiples": [0.5, 2.0]},
                        slo={"knee_min_tokens": HBM // 2}, check=True, name="kv_tiers")
    knees = result.knees["tiers"]
    assert knees["hbm"]["knee_tokens"] < HBM <= knees["hbm"]["first_turned_tokens"]
    assert knees["dram"]["knee_tokens"] < DRAM <= knees["dram"]["first_turned_tokens"]
    assert knees["nvme"]["knee_tokens"] < NVME <= knees["nvme"]["first_turned_tokens"]
    # TTFT turns where HBM runs out: hits from DRAM and NVMe are slower than from HBM
    assert result.knees["ttft"]["knee_tokens"] == knees["hbm"]["knee_tokens"]
