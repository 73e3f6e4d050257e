"""Virtual time, the in-process sink, ``ctxplat simulate`` and profiles over HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from pytest_ctxplat.api import simulate
from pytest_ctxplat.cli import main as cli_main
from pytest_ctxplat.servers.scrape import parse_metrics
from pytest_ctxplat.sim.config import SimConfig
from pytest_ctxplat.sim.hardware import load_hardware
from pytest_ctxplat.sim.server import serve_in_thread
from pytest_ctxplat.sim.virtual import VirtualTimeDeadlock, run_virtual
from pytest_ctxplat.workload.chat import ChatSessions


def test_virtual_loop_jumps_over_timers() -> None:
    async def main() -> tuple[float, list[str]]:
        loop = asyncio.get_running_loop()
        order: list[str] = []

        async def later(name: str, dt: float) -> None:
            await asyncio.sleep(dt)
            order.append(name)

        await asyncio.gather(later("b", 7200.0), later("a", 3600.0))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 60.0)
        return loop.time(), order

    wall = time.perf_counter()
    now, order = run_virtual(main())
    assert now == pytest.approx(7260.0) and order == ["a", "b"]
    assert time.perf_counter() - wall < 1.0


def test_virtual_loop_reports_a_deadlock() -> None:
    async def stuck() -> None:
        await asyncio.Event().wait()

    with pytest.raises(VirtualTimeDeadlock, match="no timer is pending"):
        run_virtual(stuck())


def _chat(block_size: int) -> ChatSessions:
    return ChatSessions(users=6, turns=4, think_time_s=30.0, system_prompt_tokens=2048,
                        user_tokens=600, output_tokens=32, block_size=block_size,
                        start_spread_s=5.0)


def test_fast_path_matches_token_path() -> None:
    profile = load_hardware("h100-llama8b-dram")
    fast = simulate(_chat(16), profile)
    slow = simulate(_chat(32), profile)  # block sizes differ: token ids are hashed
    assert fast.target["diagnostics"]["fast_path_requests"] == 24
    assert slow.target["diagnostics"]["fast_path_requests"] == 0
    for r in (fast, slow):
        assert r.metrics["requests"] == 24 and r.metrics["errors"] == 0
        assert r.hit_rates.request == pytest.approx(r.hit_rates.designed, abs=0.02)
        assert all(rec.ttft_s is not None and rec.output_tokens == 32 for rec in r.records)
        assert all(len(rec.chunk_gaps_s) == 31 for rec in r.records)
    assert fast.hit_rates.request == pytest.approx(slow.hit_rates.request, abs=0.03)
    # times are model time: a decode step of an 8B model on an H100 is ~7 ms
    itl = fast.observed["itl_ms.p50"]
    assert 6.0 < itl < 9.0


def test_simulate_cli_prints_figures_and_writes_json(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    rc = cli_main(["simulate", "chat", "--profile", "h100-llama8b-nvme", "--set", "users=4",
                   "--set", "turns=3", "--set", "block_size=16", "--profile-set",
                   "tiers.0.capacity_tokens=20000", "--json", str(out),
                   "--slo", "ttft_p95_ms=100000"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "hit rate designed / request / server" in text and "TTFT p50" in text
    data = json.loads(out.read_text())
    assert data["target"]["launcher"] == "sim-virtual"
    assert data["target"]["settings"]["tiers"][2]["name"] == "nvme"
    rc = cli_main(["simulate", "chat", "--profile", "h900"])
    assert rc == 2 and "unknown simulator profile 'h900'" in capsys.readouterr().err
    assert cli_main(["simulate", "--list-profiles"]) == 0
    assert "h100-llama8b-slowstore" in capsys.readouterr().out


def test_profile_over_http_serves_tier_metrics() -> None:
    config = SimConfig(profile="h100-llama8b-dram", speedup=20.0,
                       profile_overrides={"tiers.0.capacity_tokens": 4096})
    with serve_in_thread(config) as sim, httpx.Client(base_url=sim.url, timeout=30) as c:
        prompts = [[16 + (i * 7919 + k) % 30000 for i in range(3000)] for k in (1, 2, 1)]
        cached = []
        for p in prompts:
            r = c.post("/v1/completions", json={"prompt": p, "max_tokens": 2})
            cached.append(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])
        assert cached[:2] == [0, 0] and cached[2] == 2992
        snap = parse_metrics(c.get("/metrics").text)
        assert snap.get("vllm:external_prefix_cache_hits_total") > 0
        assert snap.has("ctxplat_sim:tier_written_blocks_total{tier=dram}")
        model = c.get("/v1/models").json()["data"][0]["id"]
        assert model == "meta-llama/Llama-3.1-8B-Instruct"


def test_decode_bursts_do_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    import pytest_ctxplat.orchestrator.inprocess as inproc
    from pytest_ctxplat.sim.virtual import VirtualClock
    from pytest_ctxplat.workload.sessions import LongSessions

    class NoBursts(VirtualClock):
        horizon = None  # type: ignore[assignment]

    spec = LongSessions(users=12, duration_s=120.0, think_min_s=0.0, think_max_s=10.0,
                             initial_tokens=3000, turn_tokens_min=200, turn_tokens_max=800,
                             max_context_tokens=12_000, output_tokens=40, start_spread_s=5.0)
    profile = load_hardware("h100-llama8b-dram", {
        "tiers.0.capacity_tokens": 60_000, "replicas": 2,
        "disaggregation": {"prefill_replicas": 1, "decode_replicas": 2}})
    with_bursts = simulate(spec, profile)
    monkeypatch.setattr(inproc, "VirtualClock", NoBursts)
    without = simulate(spec, profile)
    assert len(with_bursts.records) == len(without.records) > 50
    for a, b in zip(with_bursts.records, without.records, strict=True):
        assert (a.session_id, a.index, a.start_s, a.ttft_s, a.end_s, a.cached_tokens) == \
            (b.session_id, b.index, b.start_s, b.ttft_s, b.end_s, b.cached_tokens)
        assert list(a.chunk_gaps_s) == list(b.chunk_gaps_s)


def test_replicas_over_http_route_sessions_by_header() -> None:
    config = SimConfig(profile="h100-llama8b", speedup=50.0,
                       profile_overrides={"replicas": 3, "router": "session"})
    with serve_in_thread(config) as sim, httpx.Client(base_url=sim.url, timeout=30) as c:
        assert sim.router is not None and len(sim.router.engines) == 3
        for turn in range(3):
            prompt = [16 + (i * 31 + 7) % 30000 for i in range(500 + 100 * turn)]
            r = c.post("/v1/completions", json={"prompt": prompt, "max_tokens": 2},
                       headers={"X-Session-ID": "alice"})
            assert r.status_code == 200
        r = c.post("/v1/completions", json={"prompt": [20, 21, 22], "max_tokens": 2},
                   headers={"X-Session-ID": "bob"})
        served = [e.stats.request_success for e in sim.router.engines]
        assert sorted(served) == [0, 1, 3]  # alice's turns on one replica, bob elsewhere
        snap = parse_metrics(c.get("/metrics").text)
        assert snap.get("vllm:request_success_total") == 4
        assert snap.get("vllm:prefix_cache_hits_total") > 0
    with pytest.raises(Exception, match="in process only"):
        serve_in_thread(SimConfig(profile="h100-llama8b", profile_overrides={
            "disaggregation": {"prefill_replicas": 1, "decode_replicas": 1}}))


def test_serve_sim_rejects_a_bad_profile(capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_ctxplat.sim.server import main as sim_main

    assert sim_main(["--port", "0", "--profile", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown simulator profile 'nope'" in err and "h100-llama8b-dram" in err
