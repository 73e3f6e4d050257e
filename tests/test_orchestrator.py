"""One orchestrator for both targets: a workload played over HTTP against the simulator
and in process on the virtual clock gives results of the same shape, and on a cache that
never fills the same request count and hit rates."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_ctxplat.api import run_workload, simulate
from pytest_ctxplat.report.result import RunResult
from pytest_ctxplat.sim.config import SimConfig
from pytest_ctxplat.sim.server import serve_in_thread
from pytest_ctxplat.workload import load_workload

PROFILE = "h100-llama8b"  # about 450k tokens of HBM: this workload never evicts


def _shape(value: Any, prefix: str = "") -> set[str]:
    """Every key path of a result's JSON (lists: their first item's keys)."""
    out: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            out.add(path)
            out |= _shape(v, path)
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        out |= _shape(value[0], prefix + "[]")
    return out


@pytest.fixture(scope="module")
def results() -> tuple[RunResult, RunResult]:
    spec = load_workload("chat", {"users": 3, "turns": 3, "think_time_s": 2.0,
                                  "start_spread_s": 6.0, "system_prompt_tokens": 700,
                                  "user_tokens": 300, "output_tokens": 24, "block_size": 16})
    slo = {"ttft_p95_ms": 60_000, "cache_hit_rate_min": 0.1}
    with serve_in_thread(SimConfig(profile=PROFILE, speedup=20.0)) as sim:
        http = run_workload(sim.url, spec, slo=slo, seed=5, name="same-run",
                            scrape_every_s=0.05)
    virtual = simulate(spec, PROFILE, slo=slo, seed=5, name="same-run",
                       sample_every_s=1.0)
    return http, virtual


def test_http_and_in_process_results_have_the_same_fields(
        results: tuple[RunResult, RunResult]) -> None:
    http, virtual = results
    a, b = http.to_dict(), virtual.to_dict()
    assert a["target"]["launcher"] == "url" and b["target"]["launcher"] == "sim-virtual"
    # settings and diagnostics are the target's own (a SimConfig or a hardware profile;
    # the in-process fast path); every other field is common
    own = ("target.settings.", "target.diagnostics.")
    shape_a = {k for k in _shape(a) if not k.startswith(own)}
    shape_b = {k for k in _shape(b) if not k.startswith(own)}
    assert shape_a == shape_b
    assert http.timeline and virtual.timeline
    assert set(http.timeline[0]) == set(virtual.timeline[0])


def test_http_and_in_process_agree_on_counts_and_hit_rates(
        results: tuple[RunResult, RunResult]) -> None:
    http, virtual = results
    assert http.metrics["requests"] == virtual.metrics["requests"] == 9
    assert http.metrics["errors"] == virtual.metrics["errors"] == 0
    for source in ("designed", "request", "server"):
        assert getattr(http.hit_rates, source) == pytest.approx(
            getattr(virtual.hit_rates, source), abs=1e-12), source
    assert http.hit_rates.designed == pytest.approx(http.hit_rates.request, abs=1e-12)
    assert http.hit_rates.request > 0.3
    assert [r.cached_tokens for r in http.records] == [r.cached_tokens for r in virtual.records]
    assert http.verdict is not None and virtual.verdict is not None
    assert http.verdict.passed and virtual.verdict.passed
