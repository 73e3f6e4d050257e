"""Scale-out: one workload split into parts (worker processes, shards of an Indexed Job)
and merged into one result and one verdict."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from pytest_ctxplat.api import run_workload
from pytest_ctxplat.cli import main
from pytest_ctxplat.errors import ConfigError
from pytest_ctxplat.orchestrator.parts import (
    Part,
    merge_parts,
    parse_part,
    parse_start_at,
    part_from_env,
    split_refusal,
)
from pytest_ctxplat.report.sketch import RELATIVE_ACCURACY, Sketch
from pytest_ctxplat.sim.config import SimConfig
from pytest_ctxplat.sim.server import serve_in_thread
from pytest_ctxplat.slo import parse_slo
from pytest_ctxplat.workload import load_workload

# chat, 8 users x 4 turns: exactly 32 requests
CHAT = {"users": 8, "turns": 4, "think_time_s": 0.5, "start_spread_s": 1.0,
        "system_prompt_tokens": 256, "user_tokens": 64, "output_tokens": 16, "block_size": 16}
SLO = {"ttft_p95_ms": 60_000, "error_rate_max": 0.0}


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with serve_in_thread(SimConfig(profile="h100-llama8b", speedup=20.0)) as sim:
        yield sim.url


def test_a_shard_is_written_I_of_N() -> None:
    assert parse_part("1/3") == Part(1, 3)
    for bad in ("3/3", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(ConfigError, match="--ctxplat-shard: expected I/N"):
            parse_part(bad)


def test_an_indexed_job_environment_names_the_shard() -> None:
    assert part_from_env({"JOB_COMPLETION_INDEX": "2", "CTXPLAT_SHARDS": "4"}) == Part(2, 4)
    assert part_from_env({}) is None
    with pytest.raises(ConfigError, match="CTXPLAT_SHARDS is not"):
        part_from_env({"JOB_COMPLETION_INDEX": "0"})


def test_start_at_is_epoch_seconds_or_iso_8601() -> None:
    assert parse_start_at("1700000000") == 1700000000.0
    assert parse_start_at("2023-01-15T08:00:00Z") == parse_start_at("2023-01-15T08:00:00")
    assert parse_start_at("2023-01-15T09:00:00+01:00") == parse_start_at("2023-01-15T08:00:00Z")
    with pytest.raises(ConfigError, match="--ctxplat-start-at: expected epoch seconds"):
        parse_start_at("tomorrow")
    with pytest.raises(ConfigError, match=r"hours ahead \(more than a day\)"):
        parse_start_at(f"{time.time() + 3 * 86_400}")


def test_what_cannot_be_split_says_why() -> None:
    chat = load_workload("chat", CHAT)
    assert split_refusal(chat, None, 2) is None
    assert "8 users cannot be split into 9" in str(split_refusal(chat, None, 9))
    open_loop = load_workload("chat", {"load": {"arrival": "poisson", "rate_per_s": 2.0},
                                       "max_requests": 10})
    assert "open-loop" in str(split_refusal(open_loop, None, 2))
    assert "repeat" in str(split_refusal(chat, parse_slo({"repeat": 2}, "t"), 2))
    capacity = parse_slo({"min_sustained_users": 2}, "t")
    assert "controller" in str(split_refusal(chat, capacity, 2))


def test_workers_refuse_a_workload_that_cannot_be_split(sim_url: str) -> None:
    spec = load_workload("chat", {**CHAT, "users": 1})
    with pytest.raises(ConfigError, match=r"workers=2: t cannot be split: 1 users cannot be "
                                          r"split into 2 parts; play it with workers=1"):
        run_workload(sim_url, spec, name="t", workers=2)


def test_parts_play_disjoint_users_and_blocks_and_merge_into_one_run(sim_url: str) -> None:
    spec = load_workload("chat", CHAT)
    docs = [run_workload(sim_url, spec, slo=SLO, seed=3, name="t", part=Part(i, 2)).to_dict()
            for i in range(2)]
    users = [{r["user"] for r in d["records"]} for d in docs]
    assert users == [{0, 2, 4, 6}, {1, 3, 5, 7}]
    assert docs[0]["name"] == "t [shard 0 of 2]" and docs[0]["verdict"] is None
    merged = merge_parts(docs)
    assert merged.name == "t" and merged.metrics["requests"] == 32
    assert merged.verdict is not None and merged.verdict.passed
    # each part misses its own copy of the shared system prompt once, nothing more: the
    # parts' blocks never meet (a shared block would be a designed hit in one part only)
    whole = run_workload(sim_url, spec, slo=SLO, seed=3, name="t")
    prefix = CHAT["system_prompt_tokens"]
    assert sum(r.designed_cached_tokens for r in merged.records) == \
        sum(r.designed_cached_tokens for r in whole.records) - prefix
    assert merged.hit_rates.request == pytest.approx(merged.hit_rates.designed, abs=0.02)
    assert [s["index"] for s in (merged.parts or {})["shards"]] == [0, 1]


def test_merge_refuses_a_missing_or_repeated_shard(sim_url: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    spec = load_workload("chat", {**CHAT, "users": 3, "turns": 1})
    doc = run_workload(sim_url, spec, name="t", part=Part(1, 3), results_dir=tmp_path).to_dict()
    with pytest.raises(ConfigError, match=r"shard\(s\) 0, 2 of 3 missing"):
        merge_parts([doc])
    with pytest.raises(ConfigError, match="shard 1 of 3 found twice"):
        merge_parts([doc, doc])
    assert main(["merge", str(tmp_path)]) == 2
    assert "shard(s) 0, 2 of 3 missing" in capsys.readouterr().err


def test_workers_split_users_across_processes_into_one_verdict(sim_url: str,
                                                               tmp_path: Path) -> None:
    spec = load_workload("chat", CHAT)
    result = run_workload(sim_url, spec, slo=SLO, name="w", workers=2, results_dir=tmp_path)
    assert result.metrics["requests"] == 32 and result.verdict is not None
    assert result.verdict.passed and result.target["alive_after_run"] is True
    shards = (result.parts or {})["shards"]
    assert [s["requests"] for s in shards] == [16, 16]
    assert len({r.session_id for r in result.records}) == 8
    assert all(r.chunk_gaps_s for r in result.records if r.ok)  # ITL survives the merge
    written = orjson.loads((tmp_path / "w.json").read_bytes())
    assert written["metrics"]["requests"] == 32 and written["verdict"]["passed"]


def test_workers_draw_a_request_bound_from_one_pool(sim_url: str) -> None:
    spec = load_workload("chat", {**CHAT, "turns": 1, "recycle": True, "max_requests": 40})
    result = run_workload(sim_url, spec, slo=SLO, name="w", workers=2)
    assert result.metrics["requests"] == 40 and result.verdict is not None
    assert result.verdict.passed
    shards = (result.parts or {})["shards"]
    assert len(shards) == 2 and sum(s["requests"] for s in shards) == 40
    assert {r.user for r in result.records} == set(range(8))


def _shard_env(index: int, shards: int, start_at: float) -> dict[str, str]:
    """The environment an Indexed Job's pod sees (plus the manifest's own variables)."""
    return {**os.environ, "JOB_COMPLETION_INDEX": str(index), "CTXPLAT_SHARDS": str(shards),
            "CTXPLAT_START_AT": f"{start_at:.3f}"}


def test_two_shard_processes_merged_match_one_unsharded_run(sim_url: str,
                                                            tmp_path: Path) -> None:
    sets = [a for k, v in CHAT.items() for a in ("--set", f"{k}={v}")]
    slos = [a for k, v in SLO.items() for a in ("--slo", f"{k}={v}")]
    cli = [sys.executable, "-m", "pytest_ctxplat.cli", "run", "chat", "--url", sim_url,
           *sets, *slos, "--name", "chat", "--no-progress"]
    start = time.time() + 8.0  # time for both processes to start and prepare
    procs = [subprocess.Popen([*cli, "--json", str(tmp_path / "shards" / f"s{i}.json")],
                              env=_shard_env(i, 2, start), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for i in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()
    merged_path = tmp_path / "merged.json"
    assert main(["merge", str(tmp_path / "shards"), "--json", str(merged_path)]) == 0
    merged = orjson.loads(merged_path.read_bytes())
    whole = run_workload(sim_url, load_workload("chat", CHAT), slo=SLO, name="chat").to_dict()
    assert merged["metrics"]["requests"] == whole["metrics"]["requests"] == 32
    assert merged["verdict"]["status"] == whole["verdict"]["status"]
    assert set(merged) == set(whole)  # the schema of an unsharded run
    shards = merged["parts"]["shards"]
    assert all(abs(s["start_lag_s"]) < 1.0 for s in shards)  # they started together
    assert all(abs(s["clock_offset_s"]) < 1.0 for s in shards)
    # pooled percentiles are exact; sketches of each shard, merged, agree with them
    # within the sketch's documented relative accuracy
    parts = [orjson.loads((tmp_path / "shards" / f"s{i}.json").read_bytes()) for i in range(2)]
    ttfts = [[r["ttft_s"] for r in p["records"] if r["ttft_s"] is not None] for p in parts]
    pooled = Sketch.merged(Sketch(t) for t in ttfts).quantile(0.95)
    exact = float(np.percentile(np.concatenate(ttfts), 95, method="lower"))
    assert pooled == pytest.approx(exact, rel=RELATIVE_ACCURACY * 1.01)
    assert merged["observed"]["ttft_ms.p95"] == pytest.approx(
        1000 * float(np.percentile(np.concatenate(ttfts), 95)), rel=1e-9)


def test_merge_names_what_it_cannot_merge(sim_url: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    whole = tmp_path / "whole"
    spec = load_workload("chat", {**CHAT, "users": 2, "turns": 1})
    run_workload(sim_url, spec, name="plain", results_dir=whole)
    assert main(["merge", str(whole)]) == 2
    assert "no shard results" in capsys.readouterr().err
    shards = tmp_path / "shards"
    for name in ("a", "b"):
        for i in range(2):
            run_workload(sim_url, spec, name=name, part=Part(i, 2), results_dir=shards)
    assert main(["merge", str(shards), "--json", str(tmp_path / "one.json")]) == 2
    assert "2 tests merged; give a folder" in capsys.readouterr().err
    assert main(["merge", str(shards), "--json", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.json", "b.json"]


def test_shards_played_by_several_workers_merge_as_their_parts(sim_url: str,
                                                               tmp_path: Path) -> None:
    spec = load_workload("chat", CHAT)
    for shard in range(2):
        local = run_workload(sim_url, spec, slo=SLO, name="t", workers=2,
                             part=Part(shard, 2), results_dir=tmp_path)
        assert local.verdict is None and local.metrics["requests"] == 16
    names = sorted(p.name for p in tmp_path.glob("*.json"))
    assert names == [f"t_shard_{i}_of_4.json" for i in range(4)]
    assert main(["merge", str(tmp_path), "--json", str(tmp_path / "m" / "t.json")]) == 0
    merged = orjson.loads((tmp_path / "m" / "t.json").read_bytes())
    assert merged["metrics"]["requests"] == 32 and merged["parts"]["count"] == 4
    users = [{r["user"] for r in orjson.loads((tmp_path / n).read_bytes())["records"]}
             for n in names]
    assert users == [{0, 4}, {1, 5}, {2, 6}, {3, 7}]
