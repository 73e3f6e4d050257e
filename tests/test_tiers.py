"""Hits per KV tier: the engine adapters against recorded /metrics text, several
endpoints summed, and the tier objectives (tier_hit_rate_min, external_hit_rate_min)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from sim_support import agent_sessions, tier_profile

from pytest_ctxplat.api import simulate
from pytest_ctxplat.errors import ConfigError
from pytest_ctxplat.orchestrator.results import format_breach
from pytest_ctxplat.report.html import build_report
from pytest_ctxplat.servers import start_sim
from pytest_ctxplat.servers.profiles import find_profile, load_profile
from pytest_ctxplat.servers.scrape import (
    MetricsSnapshot,
    merge_snapshots,
    parse_metrics,
    scrape,
    scrape_all,
)
from pytest_ctxplat.servers.sglang import build_sglang_launch
from pytest_ctxplat.servers.tiers import tier_hits
from pytest_ctxplat.slo import evaluate, parse_slo

pytest_plugins = ["pytester"]

DATA = Path(__file__).parent / "data"


def _recorded(name: str) -> MetricsSnapshot:
    return parse_metrics((DATA / f"{name}_metrics.txt").read_text())


def test_sglang_hicache_tiers_from_recorded_metrics() -> None:
    hits = tier_hits(MetricsSnapshot(), _recorded("sglang_hicache"))
    assert hits.engine == "sglang"
    assert {k: v.tokens for k, v in hits.tiers.items()} == \
        {"hbm": 4000, "dram": 2000, "storage": 1000}
    assert hits.observed()["tier_hit_rate.dram"] == pytest.approx(0.2)


def test_dynamo_kvbm_tiers_from_recorded_metrics() -> None:
    hits = tier_hits(MetricsSnapshot(), _recorded("dynamo_kvbm"))
    assert hits.engine == "dynamo"
    # onboarded blocks x the worker's block size (16)
    assert hits.tiers["dram"].tokens == 250 * 16 and hits.tiers["disk"].tokens == 100 * 16
    assert hits.tiers["hbm"].hit_rate == pytest.approx(3200 / 20000)


def test_vllm_sources_map_to_tiers_from_recorded_metrics() -> None:
    hits = tier_hits(MetricsSnapshot(), _recorded("vllm_tiers"))
    assert hits.engine == "vllm"
    assert hits.tiers["hbm"].hit_rate == pytest.approx(0.5)
    assert hits.tiers["external"].hit_rate == pytest.approx(0.25)
    assert hits.tiers["external"].bytes_loaded == 262144000.0
    assert hits.external_hit_rate == pytest.approx(0.5)


def test_tier_counters_are_deltas_over_the_run() -> None:
    before = _recorded("sglang_hicache")
    after = MetricsSnapshot({k: v * 3 for k, v in before.values.items()})
    hits = tier_hits(before, after)
    assert hits.prompt_tokens == 20000 and hits.tiers["storage"].tokens == 2000


def test_tier_counters_summed_across_endpoints() -> None:
    one = _recorded("sglang_hicache")
    merged = merge_snapshots([one, one])
    hits = tier_hits(MetricsSnapshot(), merged)
    assert hits.tiers["hbm"].tokens == 8000 and hits.prompt_tokens == 20000
    assert hits.tiers["hbm"].hit_rate == pytest.approx(0.4)
    assert merged.get("sglang:token_usage") == pytest.approx(0.42)  # a gauge: not summed


def test_unknown_tier_name_is_an_error_naming_the_valid_tiers() -> None:
    with pytest.raises(ConfigError) as e:
        parse_slo({"tier_hit_rate_min": {"hmb": 0.3}}, "slo marker")
    text = str(e.value)
    assert "tier_hit_rate_min.hmb" in text and "hbm" in text and "dram" in text


def test_tier_rate_out_of_range_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"tier_hit_rate_min\.hbm"):
        parse_slo({"tier_hit_rate_min": {"hbm": 30}}, "slo marker")


def test_unattributable_tiers_fail_with_the_reason() -> None:
    plain = parse_metrics("# TYPE vllm:prompt_tokens counter\nvllm:prompt_tokens_total 10\n")
    hits = tier_hits(MetricsSnapshot(), plain)
    spec = parse_slo({"tier_hit_rate_min": {"hbm": 0.3}}, "t")
    verdict = evaluate(spec, hits.observed(), {"tier_hit_rate.hbm": hits.missing_note("hbm")})
    [check] = verdict.checks
    assert not verdict.passed and check.observed is None
    assert "cannot attribute hits to a tier" in check.note


def test_tier_of_another_server_kind_fails_naming_its_tiers() -> None:
    hits = tier_hits(MetricsSnapshot(), _recorded("sglang_hicache"))
    assert "not a sglang tier; valid: hbm, dram, storage" in hits.missing_note("nvme")


def test_tier_hit_rate_objectives_on_the_simulator() -> None:
    result = simulate(agent_sessions(4, 60.0), tier_profile("dram"),
                      slo={"tier_hit_rate_min": {"hbm": 0.3}})
    assert result.verdict is not None and result.verdict.passed, result.verdict.table()
    assert result.tiers is not None and result.tiers["engine"] == "sim"
    assert set(result.tiers["tiers"]) == {"hbm", "dram"}
    assert result.observed["tier_hit_rate.hbm"] > 0.3
    assert result.to_dict(records=False)["tiers"]["tiers"]["hbm"]["tokens"] > 0


def test_too_high_dram_tier_target_fails_with_the_tier_table() -> None:
    result = simulate(agent_sessions(4, 60.0), tier_profile("dram"),
                      slo={"tier_hit_rate_min": {"hbm": 0.3, "dram": 0.9}})
    assert result.verdict is not None and not result.verdict.passed
    [failed] = result.verdict.failed
    assert failed.key == "tier_hit_rate_min.dram"
    message = format_breach(result)
    assert "hits per tier (sim)" in message and "dram" in message.split("hits per tier")[1]
    page = build_report([result.to_dict(records=False)])
    table = page.split("Hits per KV tier (sim)")[1].split("</table>")[0]
    assert "<td>hbm</td>" in table and "<td>dram</td>" in table


def test_dram_tier_hits_and_bytes_loaded_when_the_working_set_outgrows_hbm() -> None:
    # 16 sessions of 9k-24k tokens against 64k tokens of HBM: most hits come from DRAM
    result = simulate(agent_sessions(16, 120.0), tier_profile("dram"),
                      slo={"tier_hit_rate_min": {"dram": 0.3}})
    assert result.verdict is not None and result.verdict.passed, result.verdict.table()
    assert result.tiers is not None
    dram = result.tiers["tiers"]["dram"]
    assert dram["tokens"] > result.tiers["tiers"]["hbm"]["tokens"]
    assert dram["bytes_loaded"] > 0
    # load time: the blocks over DRAM's read link, at least bytes / read bandwidth
    assert dram["load_s"] is not None and dram["load_s"] > 0
    assert result.tiers["tiers"]["hbm"]["load_s"] is None  # nothing is loaded into HBM
    hit_sum = sum(t["hit_rate"] for t in result.tiers["tiers"].values())
    assert hit_sum <= 1.0


def test_tier_missing_from_the_simulator_profile_fails_with_reason() -> None:
    result = simulate(agent_sessions(2, 30.0), tier_profile("hbm"),
                      slo={"tier_hit_rate_min": {"nvme": 0.1}})
    [check] = result.verdict.checks if result.verdict else ()
    assert check.status == "fail" and "has no 'nvme' tier (tiers: hbm)" in check.note


def test_external_hit_rate_min_fails_without_a_connector() -> None:
    result = simulate(agent_sessions(2, 30.0), tier_profile("hbm"),
                      slo={"external_hit_rate_min": 0.1})
    [check] = result.verdict.checks if result.verdict else ()
    assert check.status == "fail" and "no external prefix cache" in check.note


def test_tier_counters_summed_across_scraped_endpoints() -> None:
    texts = {"a": (DATA / "sglang_hicache_metrics.txt").read_text(),
             "b": (DATA / "sglang_hicache_metrics.txt").read_text()}

    def handler(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host == "down":
            return httpx.Response(404)
        return httpx.Response(200, text=texts[host])

    async def go() -> MetricsSnapshot | None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await scrape_all(client, "http://a",
                                    ["http://b/metrics", "http://down"])

    snap = asyncio.run(go())
    assert snap is not None
    hits = tier_hits(MetricsSnapshot(), snap)
    assert hits.tiers["dram"].tokens == 4000 and hits.prompt_tokens == 20000


def test_profile_lists_several_metrics_endpoints_for_tiers(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text("launcher: url\nurl: http://router:8000\n"
                    "metrics_urls: [http://prefill:9090, http://decode:9090/metrics]\n")
    profile = load_profile(path)
    assert profile.metrics_urls == ("http://prefill:9090", "http://decode:9090/metrics")
    path.write_text("launcher: url\nurl: http://router:8000\nmetrics_urls: [prefill:9090]\n")
    with pytest.raises(ConfigError, match=r"metrics_urls\.0"):
        load_profile(path)


@pytest.mark.parametrize("name", ["sglang-h100-hicache", "sglang-h100-hicache-storage",
                                  "sglang-h200-hicache"])
def test_sglang_hicache_tier_profiles_load_and_build_a_launch(name: str) -> None:
    profile = find_profile(name)
    assert profile.launcher == "sglang" and profile.hicache is not None
    plan = build_sglang_launch(profile, python="python", port=30000)
    assert plan.argv[1:3] == ["-m", "sglang.launch_server"]
    assert "--enable-hierarchical-cache" in plan.argv and "--enable-metrics" in plan.argv
    assert plan.argv[plan.argv.index("--page-size") + 1] == "64"
    if "storage" in name:
        assert plan.argv[plan.argv.index("--hicache-storage-backend") + 1] == "file"
        assert plan.env["SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR"].endswith("ctxplat-hicache")


def test_hicache_tiers_need_the_sglang_launcher(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("launcher: vllm\nmodel: tiny\nhicache:\n  ratio: 2\n")
    with pytest.raises(ConfigError, match="hicache: SGLang HiCache needs launcher: sglang"):
        load_profile(path)


TIER_MARKER_TEST = """
import pytest

@pytest.mark.slo(tier_hit_rate_min={"hbm": 0.3}, error_rate_max=0)
@pytest.mark.workload("chat", users=2, turns=3, think_time_s=0.2, start_spread_s=1.0,
                      system_prompt_tokens=512, user_tokens=64, output_tokens=8, block_size=16)
def test_hbm_tier(ctxplat_run):
    result = ctxplat_run()
    assert result.observed["tier_hit_rate.hbm"] >= 0.3
    assert result.tiers["engine"] == "sim"
"""


def test_tier_hit_rate_marker_on_the_simulator(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(TIER_MARKER_TEST)
    result = pytester.runpytest("--ctxplat-sim-speedup=20", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_unknown_tier_in_the_marker_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.slo(tier_hit_rate_min={"gpu": 0.3})
        def test_x(ctxplat_run):
            ctxplat_run()
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*::test_x: tier_hit_rate_min.gpu: unknown tier 'gpu'; "
                                 "valid: *hbm*"])


def test_tier_counters_summed_across_two_simulator_servers() -> None:
    servers = [start_sim({"speedup": 20.0}), start_sim({"speedup": 20.0})]
    try:
        prompt = "tier " * 200

        async def go() -> tuple[MetricsSnapshot, MetricsSnapshot, MetricsSnapshot]:
            async with httpx.AsyncClient() as client:
                one, two = servers[0].url, servers[1].url
                before = await scrape_all(client, one, [two])
                for url in (one, one, two, two):
                    resp = await client.post(url + "/v1/completions", timeout=30, json={
                        "model": "m", "prompt": prompt, "max_tokens": 2})
                    assert resp.status_code == 200
                after = await scrape_all(client, one, [two + "/metrics"])
                alone = await scrape(client, one)
                assert before is not None and after is not None and alone is not None
                return before, after, alone

        before, after, alone = asyncio.run(go())
    finally:
        for s in servers:
            s.close()
    both = tier_hits(before, after)
    first = tier_hits(MetricsSnapshot(), alone)
    assert both.engine == "sim"
    assert both.prompt_tokens == 2 * first.prompt_tokens > 0
    assert both.tiers["hbm"].tokens == 2 * first.tiers["hbm"].tokens > 0


def test_vllm_cached_by_source_tier_labels_map_to_tiers() -> None:
    hits = tier_hits(MetricsSnapshot(), _recorded("vllm_cached_by_source"))
    assert hits.engine == "vllm" and not hits.note  # every vLLM 0.32 source is known
    assert hits.tiers["hbm"].tokens == 128
    assert hits.tiers["external"].tokens == 1024  # external_unspecified: the connector
    assert hits.tiers["external"].hit_rate == pytest.approx(1024 / 2176)
    assert hits.tiers["dram"].tokens == 0 and hits.tiers["disk"].tokens == 0
