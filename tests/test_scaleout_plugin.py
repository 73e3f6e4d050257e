"""Scale-out through the plugin: --ctxplat-workers, split(), --ctxplat-shard and
pytest-xdist, with their usage errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_ctxplat.sim.config import SimConfig
from pytest_ctxplat.sim.server import serve_in_thread

pytest_plugins = ["pytester"]

SPLIT_TEST = """
import pytest

@pytest.mark.split({args})
@pytest.mark.slo(ttft_p95_ms={ttft}, error_rate_max=0)
@pytest.mark.workload("chat", users=8, turns=4, think_time_s=0.5, start_spread_s=1.0,
                      system_prompt_tokens=256, user_tokens=64, output_tokens=16,
                      block_size=16)
def test_split(ctxplat_run):
    ctxplat_run()
"""
WHOLE_TEST = """
import pytest

@pytest.mark.workload("chat", users=2, turns=1, output_tokens=8, block_size=16,
                      system_prompt_tokens=64, user_tokens=16)
def test_whole(ctxplat_run):
    assert ctxplat_run().metrics["requests"] == 2
"""


@pytest.fixture(autouse=True)
def _quiet_asyncio_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with serve_in_thread(SimConfig(profile="h100-llama8b", speedup=20.0)) as sim:
        yield sim.url


def _result(folder: Path, stem: str) -> dict[str, object]:
    found = [p for p in folder.glob("*.json") if p.stem.endswith(stem)]
    assert len(found) == 1, sorted(p.name for p in folder.glob("*.json"))
    doc: dict[str, object] = json.loads(found[0].read_text())
    return doc


@pytest.mark.parametrize(("args", "match"), [
    (["--ctxplat-shard=2/2"], "*--ctxplat-shard: expected I/N with 0 <= I < N*got '2/2'*"),
    (["--ctxplat-workers=0"], "*--ctxplat-workers must be >= 1*"),
    (["--ctxplat-start-at=soon", "--ctxplat-shard=0/2"],
     "*--ctxplat-start-at: expected epoch seconds or an ISO 8601 time*"),
])
def test_bad_scale_out_options_are_usage_errors(pytester: pytest.Pytester, args: list[str],
                                                match: str) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([match])


def test_an_indexed_job_without_the_shard_count_is_a_usage_error(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    monkeypatch.delenv("CTXPLAT_SHARDS", raising=False)
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*JOB_COMPLETION_INDEX=1 is set but CTXPLAT_SHARDS is not*"])


def test_a_bad_split_marker_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SPLIT_TEST.format(args="workerz=2", ttft=60000))
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*::test_split: split() takes one keyword, workers=N; got "
                                 "workerz*"])


def test_split_workers_play_one_test_from_two_processes(pytester: pytest.Pytester,
                                                        sim_url: str) -> None:
    pytester.makepyfile(SPLIT_TEST.format(args="workers=2", ttft=60000))
    result = pytester.runpytest(f"--ctxplat-url={sim_url}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    doc = _result(pytester.path / "ctxplat-results", "test_split")
    assert doc["metrics"]["requests"] == 32  # type: ignore[index]
    assert doc["parts"]["count"] == 2 and doc["verdict"]["passed"]  # type: ignore[index]


def test_a_shard_writes_its_part_named_with_the_shard(pytester: pytest.Pytester,
                                                      sim_url: str) -> None:
    pytester.makepyfile(SPLIT_TEST.format(args="", ttft=0.001))
    result = pytester.runpytest(f"--ctxplat-url={sim_url}", "--ctxplat-shard=1/2",
                                "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)  # judged only merged with shard 0 (ctxplat merge)
    doc = _result(pytester.path / "ctxplat-results", "test_split_shard_1_of_2")
    assert doc["verdict"] is None and doc["metrics"]["requests"] == 16  # type: ignore[index]


def test_xdist_dist_each_splits_a_test_across_workers_into_one_verdict(
        pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(test_a=SPLIT_TEST.format(args="", ttft=60000), test_b=WHOLE_TEST)
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "each",
                                           f"--ctxplat-url={sim_url}", "-p",
                                           "no:cacheprovider")
    result.assert_outcomes(passed=3, skipped=1)  # test_whole: played by gw0 only
    result.stdout.fnmatch_lines(["*ctxplat split tests (merged across xdist workers)*",
                                 "*test_a.py::test_split: 32 requests from 2 workers: * (passed)"])
    merged = _result(pytester.path / "ctxplat-results", "test_a.py_test_split")
    assert merged["metrics"]["requests"] == 32  # type: ignore[index]


def test_xdist_fails_the_session_when_the_merged_verdict_is_breached(
        pytester: pytest.Pytester, sim_url: str) -> None:
    pytester.makepyfile(test_a=SPLIT_TEST.format(args="", ttft=0.001))
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "each",
                                           f"--ctxplat-url={sim_url}", "-p",
                                           "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*test_split: 32 requests from 2 workers: fail (failed)",
                                 "*SLO breached*"])
