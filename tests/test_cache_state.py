"""Cache-state fixtures on the simulator: ``ctxplat_cold`` (reset every tier, verified
by a probe; an invalid setup when the server ignores resets) and ``ctxplat_warm`` (a
workload's prefixes served from a lower tier), and the simulator's ``ignore_reset``."""

from __future__ import annotations

import httpx
import pytest

from pytest_ctxplat.api import run_sync
from pytest_ctxplat.orchestrator.cache_state import (
    InvalidSetup,
    make_cold,
    reset_all,
    server_capacity,
)
from pytest_ctxplat.servers.sim import apply_sim_set, start_sim
from pytest_ctxplat.sim.hardware import load_hardware

pytest_plugins = ["pytester"]

FAST = ["-p", "no:cacheprovider"]
INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\nctxplat_profile_dirs = servers\n"

# HBM of 8192 tokens over host DRAM: a small fill pushes a workload out of HBM. The
# profile asks for a reset before each test: ctxplat_warm must keep its state anyway.
DRAM_PROFILE = """launcher: sim
description: 8k-token HBM over host DRAM
reset_cache: true
sim:
  profile: h100-llama8b-dram
  profile_overrides: {tiers.0.capacity_tokens: 8192}
  speedup: 20
"""

COLD_TEST = """
import pytest

@pytest.mark.workload("chat", users=2, turns=2, think_time_s=0.05, start_spread_s=0,
                      system_prompt_tokens=256, user_tokens=32, output_tokens=4,
                      block_size=16)
def test_cold_start(ctxplat_cold, ctxplat_run):
    assert ctxplat_cold.cached_tokens == 0
    assert not any(ctxplat_cold.hit_deltas.values())
    r = ctxplat_run()
    assert r.metrics["errors"] == 0
"""

WARM_TEST = """
import pytest

@pytest.mark.workload("chat", users=2, turns=1, think_time_s=0.05, start_spread_s=0,
                      system_prompt_tokens=1024, user_tokens=32, output_tokens=4,
                      block_size=16)
def test_warm_tier_dram(ctxplat_cold, ctxplat_warm, ctxplat_run):
    report = ctxplat_warm(tier="dram")
    assert report.evicted_by == "fill" and report.verified
    assert report.tier_hits["dram"] > 0
    r = ctxplat_run()
    counters = r.server.figures["sim_counters"]
    dram = sum(v for k, v in counters.items()
               if k.startswith("ctxplat_sim:tier_hit_blocks") and "tier=dram" in k)
    print(f"\\nWARM dram_hit_blocks={dram} request_hit_rate={r.hit_rates.request:.3f}")
    assert dram >= 1024 // 16             # the shared system prompt came from DRAM
    assert r.hit_rates.designed < 0.5 < 0.95 < r.hit_rates.request  # warm, not cold
"""


@pytest.fixture(autouse=True)
def _ini(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    (pytester.path / "servers").mkdir()
    (pytester.path / "servers" / "sim-dram.yaml").write_text(DRAM_PROFILE)


def test_ctxplat_cold_passes_on_the_simulator(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_cold=COLD_TEST)
    result = pytester.runpytest_inprocess(*FAST)
    result.assert_outcomes(passed=1)


def test_ctxplat_cold_errors_as_invalid_setup_when_resets_are_ignored(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_cold=COLD_TEST)
    result = pytester.runpytest_inprocess("--ctxplat-sim-set", "ignore_reset=true", *FAST)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ERROR at setup of test_cold_start*",
                                 "*invalid setup: the cache of sim * is not cold after reset*"
                                 "cached_tokens=*"])


def test_ctxplat_cold_on_a_tiered_profile_that_ignores_resets_names_the_tiers(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_cold=COLD_TEST)
    result = pytester.runpytest_inprocess("--ctxplat-server=sim-dram", "--ctxplat-sim-set",
                                          "ignore_reset=true", *FAST)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*invalid setup: *ctxplat_sim:tier_hit_blocks{tier=hbm} by *"])


def test_ctxplat_warm_tier_dram_serves_hits_from_dram(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_warm=WARM_TEST)
    result = pytester.runpytest_inprocess("--ctxplat-server=sim-dram", "-s", *FAST)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*WARM dram_hit_blocks=*"])


INDIRECT_TEST = """
import pytest

@pytest.mark.parametrize("ctxplat_warm", ["dram"], indirect=True)
@pytest.mark.workload("chat", users=1, turns=1, think_time_s=0.05, start_spread_s=0,
                      system_prompt_tokens=512, user_tokens=32, output_tokens=4,
                      block_size=16)
def test_warm_tier_at_setup(ctxplat_warm, ctxplat_run):
    assert ctxplat_warm.report.tier == "dram" and ctxplat_warm.report.tier_hits["dram"] > 0
    assert ctxplat_run().hit_rates.request > 0.9
"""


def test_ctxplat_warm_tier_indirect_warms_at_setup(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_warm=INDIRECT_TEST)
    result = pytester.runpytest_inprocess("--ctxplat-server=sim-dram", *FAST)
    result.assert_outcomes(passed=1)


def test_ctxplat_warm_tier_without_that_tier_errors_at_setup(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_warm=INDIRECT_TEST)
    # sim-small-cache: a 16k-token HBM and no lower tier, so nothing can come from DRAM
    result = pytester.runpytest_inprocess("--ctxplat-server=sim-small-cache", *FAST)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ERROR at setup of test_warm_tier_at_setup*",
                                 "*invalid setup: ctxplat_warm(tier='dram'): after filling HBM "
                                 "with 24576 tokens*hit no blocks in dram*"])


def test_ctxplat_warm_rejects_an_unknown_tier(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_warm="""
def test_warm_tier_typo(ctxplat_warm):
    ctxplat_warm(tier="dramm")
""")
    result = pytester.runpytest_inprocess(*FAST)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*invalid setup: ctxplat_warm: tier='dramm' is not a tier; "
                                 "valid: hbm, dram, nvme, disk, external*"])


def test_sim_reset_answers_success_and_ignore_reset_keeps_blocks() -> None:
    async def cold(settings: dict[str, object]) -> tuple[dict[str, object], str]:
        server = start_sim(settings)
        try:
            async with httpx.AsyncClient() as client:
                resp = await client.post(server.url + "/reset_prefix_cache",
                                         params={"reset_external": "true"})
                body = resp.json()
                stores = await reset_all(server, client)
            try:
                await make_cold(server, seed=1)
                outcome = "cold"
            except InvalidSetup as exc:
                outcome = str(exc)
            return body, outcome + " | " + "; ".join(stores)
        finally:
            server.close()

    body, outcome = run_sync(cold({}))
    assert body == {"success": True} and outcome.startswith("cold")
    body, outcome = run_sync(cold({"ignore_reset": True}))
    assert body == {"success": True}  # it says so, yet keeps every block
    assert outcome.startswith("invalid setup: ")


def test_ignore_reset_is_a_sim_key_and_a_profile_key() -> None:
    assert apply_sim_set({}, {"ignore_reset": True})["ignore_reset"] is True
    assert load_hardware("h100-llama8b-dram", {"ignore_reset": True}).ignore_reset
    assert not load_hardware("h100-llama8b-dram").ignore_reset


def test_server_capacity_reads_cache_config_info() -> None:
    text = ('# TYPE vllm:cache_config_info gauge\n'
            'vllm:cache_config_info{block_size="16",num_gpu_blocks="512"} 1.0\n')
    assert server_capacity(text) == 8192
    assert server_capacity("# TYPE x counter\nx_total 1\n") is None


def test_a_refused_reset_is_read_from_the_body_not_the_status() -> None:
    from pytest_ctxplat.orchestrator.http import _refused

    assert _refused(httpx.Response(200, json={"success": False}))
    assert not _refused(httpx.Response(200, json={"success": True}))
    assert not _refused(httpx.Response(200))  # older servers: an empty 200
    assert not _refused(httpx.Response(200, text="ok"))
