"""``ctxplat fit``, distributions as data and the realism report.

The project's own generated sessions (``fixtures/traces/kvcache``) always run; the public
sample traces in ``../shared/traces`` are used where present (skipped otherwise).
"""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import yaml
from workload_support import FIXTURE_TRACES, SHARED_TRACES, needs_samples

from pytest_ctxplat.analysis.fit import choose, fit_agent, ks_distance, read_agent_samples
from pytest_ctxplat.analysis.realism import realism_report
from pytest_ctxplat.analysis.sources import load_sources, trace_from_workload
from pytest_ctxplat.cli import main
from pytest_ctxplat.errors import ConfigError
from pytest_ctxplat.workload.dist import Dist
from pytest_ctxplat.workload.loader import load_workload
from pytest_ctxplat.workload.plan import plan_workload

KVCACHE = FIXTURE_TRACES / "kvcache"
WEKA = SHARED_TRACES / "weka"
MOONCAKE = SHARED_TRACES / "mooncake" / "conversation_trace.jsonl"
TTL_KEYS = ("60", "300", "3600")


def _check_report_shape(doc: dict) -> None:
    for side in ("source", "synthetic"):
        for key in TTL_KEYS:
            row = doc[side]["ttl"][key]
            assert 0 <= row["block_hit_rate"] <= 1
            assert row["misses_per_block"] >= 1 or row["block_hit_rate"] > 0
            assert row["working_set_tokens_per_session"] > 0
        ages = doc[side]["context_tokens_by_session_age"]
        assert ages[0]["from_s"] == 0 and sum(a["requests"] for a in ages) == \
            doc[side]["requests"]
        assert 0 <= doc[side]["infinite"]["block_hit_rate"] <= 1
    for name in ("think_time_s", "input_tokens"):
        assert 0 <= doc["distributions"][name]["ks"] <= 1


# -- distributions as data --------------------------------------------------------------
def test_quantile_table_draws_follow_the_table() -> None:
    d = Dist(quantiles=((0, 0), (0.5, 10), (0.9, 100), (1, 1000)))
    rng = random.Random(1)
    draws = sorted(d.sample(rng) for _ in range(4000))
    assert draws[0] >= 0 and draws[-1] <= 1000
    assert 4 < draws[1000] < 6
    assert 50 < draws[2800] < 60


def test_a_bad_distribution_is_named_with_the_key_and_what_is_valid() -> None:
    with pytest.raises(ConfigError, match=r"distributions\.think_time_s.*must not decrease"):
        load_workload("coding_agent", {"distributions": {"think_time_s": {
            "quantiles": [[0, 5], [0.5, 1], [1, 9]]}}})
    with pytest.raises(ConfigError, match=r"exactly one of constant, quantiles"):
        load_workload("coding_agent", {"distributions": {"output_tokens": {
            "constant": 5, "lognormal": {"median": 5, "sigma": 1}}}})
    with pytest.raises(ConfigError, match=r"distributions\.tool_time_s.*unknown key"):
        load_workload("coding_agent", {"distributions": {"tool_time_s": {"normal": 1}}})


def test_a_distribution_replaces_the_default_draw() -> None:
    spec = load_workload("coding_agent", {
        "users": 2, "recycle": False, "human_turns": 3,
        "distributions": {"output_tokens": {"constant": 77},
                          "session_requests": {"constant": 9}}})
    plan = plan_workload(spec)
    assert {r.output_tokens for r in plan.requests} == {77}
    assert len(plan) == 18  # two sessions of exactly nine requests


def test_choose_prefers_a_lognormal_then_a_mixture_then_a_table() -> None:
    rng = random.Random(3)
    ln = [rng.lognormvariate(2.0, 0.7) for _ in range(3000)]
    d, info = choose(ln)
    assert info.chosen == "lognormal" and "lognormal" in d
    bimodal = [rng.gauss(10, 1) for _ in range(1500)] + [rng.gauss(1000, 10)
                                                         for _ in range(1500)]
    d, info = choose(bimodal)
    assert info.chosen == "mixture" and info.ks_mixture < info.ks_lognormal
    assert sorted(m["lognormal"]["median"] for m in d["mixture"]) == pytest.approx(
        [10, 1000], rel=0.05)
    d, info = choose([0.0] * 500 + ln)  # zeros: no log-normal fits
    assert info.chosen == "quantiles" and d["quantiles"][0] == [0.0, 0.0]
    assert ks_distance([1, 2, 3], [1, 2, 3]) == 0
    assert ks_distance([1, 2, 3], [10, 20, 30]) == 1


# -- fit and report -----------------------------------------------------------------------
def test_fit_on_generated_sessions_writes_a_loadable_definition_and_a_report(tmp_path) -> None:
    out, rep = tmp_path / "fitted.yaml", tmp_path / "report.json"
    rc = main(["fit", str(KVCACHE), "-o", str(out), "--report", str(rep),
               "--set", "users=3", "--set", "duration_s=120", "--set", "recycle=true"])
    assert rc == 0
    text = out.read_text()
    assert text.startswith("# Fitted by ctxplat fit") and "# Made with: ctxplat fit" in text
    data = yaml.safe_load(text)
    assert data["kind"] == "coding_swarm" and data["users"] == 3  # it has subagents
    assert set(data["distributions"]) >= {"output_tokens", "think_time_s", "session_requests"}
    spec = load_workload(str(out))
    assert len(plan_workload(spec)) > 0
    doc = json.loads(rep.read_text())
    _check_report_shape(doc)
    assert doc["source"]["sessions"] == 2


def test_analyze_per_session_keys_blocks_per_session() -> None:
    shared = trace_from_workload("coding-agent", {"users": 4}, duration_s=900)
    own = trace_from_workload("coding-agent", {"users": 4}, duration_s=900, per_session=True)
    assert len(own) == len(shared)
    assert len(set(own.session.tolist())) >= len(set(shared.session.tolist()))
    # the shared system prompt and tools count once per session, not once in all
    assert own.num_blocks > shared.num_blocks


def test_analyze_per_session_option(tmp_path, capsys) -> None:
    out = tmp_path / "a.json"
    assert main(["analyze", "coding-agent", "--per-session", "--duration", "600",
                 "--set", "users=2", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["sessions"] >= 2 and set(doc["ttl"]) == set(TTL_KEYS)


def test_fit_names_what_is_wrong(tmp_path, capsys) -> None:
    out = str(tmp_path / "w.yaml")
    assert main(["fit", str(tmp_path / "missing"), "-o", out]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["fit", str(KVCACHE), "-o", out, "--kind", "chat"]) == 2
    assert "--kind chat needs Mooncake-style traces" in capsys.readouterr().err
    assert main(["fit", str(KVCACHE), "-o", out, "--set", "distributions={}"]) == 2
    assert "set top-level keys only" in capsys.readouterr().err


@needs_samples
def test_fit_on_the_sample_traces_reports_source_and_synthetic(tmp_path) -> None:
    out, rep = tmp_path / "w.yaml", tmp_path / "r.json"
    assert main(["fit", str(WEKA), "-o", str(out), "--report", str(rep),
                 "--sessions", "40"]) == 0
    doc = json.loads(rep.read_text())
    _check_report_shape(doc)
    assert doc["source"]["sessions"] == len(list(WEKA.glob("*.json")))
    assert doc["synthetic"]["sessions"] == 40
    # the subagents in the samples make it a swarm, with their fan-out fitted
    assert doc["kind"] == "coding_swarm" and "subagents" in doc["fit"]
    assert yaml.safe_load(out.read_text())["spawn_probability"] > 0


@needs_samples
def test_fit_reads_the_sessions_the_way_the_docs_say() -> None:
    s = read_agent_samples([WEKA / "trace_0313.json"])
    raw = json.loads((WEKA / "trace_0313.json").read_text())
    main_reqs = [e for e in raw["requests"] if e.get("type") != "subagent"]
    assert s.sessions == 1 and s.session_requests == [len(main_reqs)]
    assert len(s.output_tokens) == len(main_reqs)
    assert len(s.think_time_s) + len(s.tool_time_s) == len(main_reqs) - 1
    d, _ = fit_agent(s)
    assert d["kind"] == "coding_agent" and "subagents" not in d["distributions"]


@needs_samples
def test_fitted_synthetic_is_close_to_the_samples_it_came_from(tmp_path) -> None:
    src = load_sources([str(WEKA)])
    out = tmp_path / "w.yaml"
    assert main(["fit", str(WEKA), "-o", str(out), "--kind", "coding_agent",
                 "--sessions", "5"]) == 0
    doc = realism_report(src, load_workload(str(out)), sessions=150)
    # few sessions to fit from: the curve is close, not exact
    for key in TTL_KEYS:
        a = doc["source"]["ttl"][key]["block_hit_rate"]
        b = doc["synthetic"]["ttl"][key]["block_hit_rate"]
        assert abs(a - b) < 0.15, (key, a, b)


@pytest.mark.skipif(not MOONCAKE.is_file(), reason=f"sample trace not found at {MOONCAKE}")
def test_fit_on_a_mooncake_trace_gives_a_chat_definition(tmp_path) -> None:
    out = tmp_path / "chat.yaml"
    assert main(["fit", str(MOONCAKE), "-o", str(out), "--sessions", "50"]) == 0
    data = yaml.safe_load(out.read_text())
    assert data["kind"] == "chat" and data["block_size"] == 512
    assert load_workload(str(out)).kind == "chat"


def test_a_number_set_on_a_fitted_definition_wins_over_its_distribution() -> None:
    spec = load_workload("coding-agent", {"think_time_median_s": 2.0, "output_tokens": 48})
    d = spec.distributions
    assert d.think_time_s is None and d.output_tokens is None  # the numbers are used
    assert d.tool_time_s is not None  # the rest of the fit stays
    plan = plan_workload(dataclasses.replace(spec, users=2, duration_s=600, recycle=False))
    outs = [r.output_tokens for r in plan.requests]
    assert sorted(outs)[len(outs) // 2] in range(30, 80)  # log-normal around 48
