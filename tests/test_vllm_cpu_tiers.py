"""Cold and warm cache states on a real vLLM (``vllm-cpu-disk``: tiny Llama with dummy
weights, vLLM's ExampleConnector storing KV blocks as files, the second tier).

One pytest session in a subprocess, two vLLM starts (the start and one restart):
``ctxplat_cold`` is verified after the reset (the GPU prefix cache and the disk store,
which vLLM's reset leaves alone while answering success), and ``ctxplat_warm(tier="disk")``
loads a workload's prefix, restarts the server, and the run's hits come from the disk
tier (vLLM's external prefix-cache counters). Skipped with the reason when the vLLM
environment is missing (scripts/setup-vllm-cpu.sh creates it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from process_support import NO_VLLM, inner_vllm_session, vllm_python

pytestmark = pytest.mark.integration

VLLM_PYTHON = vllm_python()
needs_vllm = pytest.mark.skipif(VLLM_PYTHON is None, reason=NO_VLLM)

SUITE = '''
import pytest

WL = dict(users=1, turns=2, block_size=128, think_time_s=0.1, start_spread_s=0,
          system_prompt_tokens=1024, user_tokens=128, output_tokens=8)


@pytest.mark.workload("chat", **WL)
def test_cold_after_reset(ctxplat_cold, ctxplat_run):
    assert ctxplat_cold.cached_tokens == 0
    assert any(r.startswith("disk_store") for r in ctxplat_cold.resets), ctxplat_cold
    r = ctxplat_run()
    figures = r.server.figures
    print(f"\\nCOLD probe_cached={ctxplat_cold.cached_tokens} "
          f"external_hits={figures['external_prefix_cache_hits']} "
          f"request={r.hit_rates.request:.4f} designed={r.hit_rates.designed:.4f}")
    assert figures["external_prefix_cache_hits"] == 0  # nothing left on disk
    assert abs(r.hit_rates.request - r.hit_rates.designed) <= 0.05


# the hits per tier asserted as objectives: most of the prompt from the disk tier
# (vLLM's external_kv_transfer source), and the connector's own hit rate
@pytest.mark.slo(tier_hit_rate_min={"external": 0.3}, external_hit_rate_min=0.5)
@pytest.mark.workload("chat", **WL)
def test_warm_tier_disk_after_restart(ctxplat_server, ctxplat_cold, ctxplat_warm,
                                      ctxplat_run):
    starts = ctxplat_server.starts
    report = ctxplat_warm(tier="disk")
    assert report.evicted_by == "restart" and ctxplat_server.starts == starts + 1
    r = ctxplat_run()
    ext = r.server.external_hit_rate
    by_source = r.server.figures.get("prompt_tokens_by_source", {})
    print(f"\\nWARM external={ext} request={r.hit_rates.request:.4f} "
          f"designed={r.hit_rates.designed:.4f} by_source={by_source}")
    assert ext is not None and ext > 0.5, r.server
    assert by_source["external_kv_transfer"] >= 1024
    assert r.hit_rates.request > r.hit_rates.designed + 0.3  # warm, not cold
    checks = {c.key: c for c in r.verdict.checks}
    print(f"TIERS {r.tiers}")
    assert checks["tier_hit_rate_min.external"].status == "pass", r.verdict.table()
    assert r.observed["tier_hit_rate.external"] >= 0.3 and r.tiers["engine"] == "vllm"
'''


@needs_vllm
def test_vllm_cpu_disk_cold_and_warm_tier(tmp_path: Path) -> None:
    with inner_vllm_session(tmp_path, SUITE, "--ctxplat-server=vllm-cpu-disk",
                            "--ctxplat-results=res") as (out, why):
        assert "PASSED test_suite.py::test_cold_after_reset" in out, why
        assert "PASSED test_suite.py::test_warm_tier_disk_after_restart" in out, why
        for line in out.splitlines():
            if line.startswith(("COLD", "WARM", "TIERS")):
                print(line)
