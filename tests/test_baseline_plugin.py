"""Baselines through pytest: --ctxplat-save, --ctxplat-compare, the tolerance marker,
--ctxplat-sim-set, and the errors a user sees."""

from __future__ import annotations

import json

import pytest
import scipy.stats  # noqa: F401  (imported once: nested sessions would import it again)
from junit_support import junit_properties

import pytest_ctxplat.report.baseline
import pytest_ctxplat.servers.version  # noqa: F401

pytest_plugins = ["pytester"]

FAST = ["-p", "no:cacheprovider"]

GATE_TEST = """
import pytest

@pytest.mark.slo(error_rate_max=0)
@pytest.mark.workload("chat", users=2, turns=3, think_time_s=0.1, start_spread_s=0.2,
                      system_prompt_tokens=512, user_tokens=64, output_tokens=24,
                      block_size=16)
def test_gate(ctxplat_run):
    ctxplat_run()
"""

# Real time on a shared machine is noisy: the gate here only has to catch a 3x slowdown.
INI = ("[pytest]\nasyncio_default_fixture_loop_scope = function\n"
       "ctxplat_tolerances =\n    latency=+60%\n    speed=-40%\n")


@pytest.fixture(autouse=True)
def _ini(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)


def test_baseline_save_compare_and_a_slowdown_that_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_gate=GATE_TEST)
    saved = pytester.runpytest_inprocess("--ctxplat-save", "v1", *FAST)
    saved.assert_outcomes(passed=1)
    folder = pytester.path / "ctxplat-baselines" / "v1"
    index = json.loads((folder / "index.json").read_text())
    assert list(index["tests"]) == ["test_gate.py::test_gate"]
    prov = index["provenance"]
    assert prov["engine"]["name"] == "ctxplat-sim" and prov["block_size"] == 16
    assert len(prov["workload_hash"]) == 16 and prov["plugin_version"]

    same = pytester.runpytest_inprocess("--ctxplat-compare", "v1", "--junitxml=j.xml", *FAST)
    same.assert_outcomes(passed=1)
    props = junit_properties(pytester.path / "j.xml")
    assert props["ctxplat.comparison"] == "pass"
    assert props["ctxplat.comparison.baseline"] == "v1"

    slow = pytester.runpytest_inprocess("--ctxplat-compare", "v1", "--ctxplat-sim-set",
                                        "slowdown=3", *FAST)
    slow.assert_outcomes(failed=1)
    slow.stdout.fnmatch_lines(["*ctxplat: sim-set slowdown=3*",
                               "*BaselineRegression: baseline 'v1' for test_gate.py::test_gate*",
                               "*metric*baseline*now*delta*tolerance*p*verdict*",
                               "*e2e_ms.p95*REGRESSION*",
                               "power: smallest slowdown detectable*"])
    # the summary table says which baseline verdict failed the test
    slow.stdout.fnmatch_lines(["*test*outcome*SLO*baseline*",
                               "test_gate.py::test_gate*failed*REGRESSION"])
    result = json.loads((pytester.path / "ctxplat-results" /
                         "test_gate.py_test_gate.json").read_text())
    assert result["comparison"]["status"] == "regression"


def test_unknown_baseline_name_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_gate=GATE_TEST)
    (pytester.path / "ctxplat-baselines" / "v1").mkdir(parents=True)
    (pytester.path / "ctxplat-baselines" / "v1" / "index.json").write_text('{"tests": {}}')
    result = pytester.runpytest_inprocess("--ctxplat-compare", "v2", *FAST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--ctxplat-compare: unknown baseline 'v2' in *; "
                                 "available: v1*"])


def test_baseline_tolerance_marker_typo_names_the_test_and_valid_keys(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_tol="""
        import pytest

        @pytest.mark.tolerance(ttft_p95="+10%")
        def test_x():
            pass
    """)
    result = pytester.runpytest_inprocess(*FAST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_tol.py::test_x: tolerance(): ttft_p95: unknown "
                                 "tolerance key; valid: ttft_ms_p50, *latency*"])


def test_baseline_tolerance_bad_value_and_bad_sim_set_are_usage_errors(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_tol="""
        import pytest

        @pytest.mark.tolerance(ttft_ms_p95="ten percent")
        def test_x():
            pass
    """)
    result = pytester.runpytest_inprocess(*FAST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_x: tolerance(): ttft_ms_p95: expected '+10%'*"])
    bad = pytester.runpytest_inprocess("--ctxplat-sim-set", "slowdonw=2", *FAST)
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--ctxplat-sim-set*slowdonw: unknown simulator key; "
                              "valid: *slowdown*"])
    zero = pytester.runpytest_inprocess("--ctxplat-sim-set", "slowdown=0", *FAST)
    assert zero.ret == pytest.ExitCode.USAGE_ERROR
    zero.stderr.fnmatch_lines(["*slowdown*must be > 0*"])


def test_baseline_refuses_another_workload_and_warns_on_a_missing_test(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_gate=GATE_TEST)
    pytester.runpytest_inprocess("--ctxplat-save", "v1", *FAST).assert_outcomes(passed=1)
    pytester.makepyfile(test_gate=GATE_TEST.replace("output_tokens=24", "output_tokens=12"),
                        test_new=GATE_TEST.replace("test_gate", "test_new"))
    result = pytester.runpytest_inprocess("--ctxplat-compare", "v1", *FAST)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*baseline 'v1' for test_gate.py::test_gate: workload differs (hash *)*",
        "*warning: baseline 'v1' has no entry for test_new.py::test_new: not compared*"])
