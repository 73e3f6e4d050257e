"""Release gate: judge a build against the baseline of the last release.

In CI the gate is two pytest options over your SLO tests::

    pytest -m slo --ctxplat-save v1.4       # on the release: store each test's result
    pytest -m slo --ctxplat-compare v1.4    # on every build: fail a test that regressed

A test fails when a metric moved past its tolerance (latency ``+10%``, speeds ``-10%``,
hit rates ``-0.02``, ...; per test with ``@pytest.mark.tolerance(...)``) *and* a
Mann-Whitney U test over the per-request samples says the shift is real (p < 0.05). The
failure names the baseline and shows the table: metric, baseline, now, delta, tolerance,
p, verdict, and under it the smallest slowdown the comparison can detect.

Before trusting a gate, prove it catches a regression of the size you care about: the
simulator's ``slowdown`` knob (``--ctxplat-sim-set slowdown=1.3`` in pytest, a
``profile_overrides`` key here) makes every modelled duration 30% longer. This file
does it with the library API in virtual time (a second or so): save a baseline from one
run, then compare later runs. The bare ``slo`` marker selects it with ``pytest -m slo``.
"""

from pathlib import Path

import pytest

from pytest_ctxplat import simulate
from pytest_ctxplat.report.baseline import compare_to_baseline, entry_from_result, save_entry

pytestmark = pytest.mark.slo

PROFILE = "h100-llama8b"  # a simulated deployment (see ctxplat simulate --list-profiles)
# the built-in chat workload, made short: 8 users start new chats until 200 requests
WORKLOAD = {"users": 8, "max_requests": 200, "recycle": True}


def run_build(slowdown: float = 1.0):
    """One run of "the build": the workload against the simulator, ``slowdown`` times
    slower than the released one."""
    # seed 1: with seed 0 the chat workload's fixed 2 s think time happens to phase-lock
    # the users' arrivals to the H100 step grid, so TTFT p50 jumps 11% for a 0.01%
    # slowdown; seeds 1 and 2 move smoothly (+2% to +7% for 5%)
    return simulate("chat", PROFILE, overrides=WORKLOAD, seed=1, name="test_chat_gate",
                    profile_overrides={"slowdown": slowdown})


@pytest.fixture(scope="module")
def baselines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A baseline directory holding 'release', saved from one run of the released build
    (with pytest: ``--ctxplat-save release``)."""
    directory = tmp_path_factory.mktemp("ctxplat-baselines")
    save_entry(directory, "release", entry_from_result(run_build()))
    return directory


def test_same_build_passes_its_own_baseline(baselines):
    comparison = compare_to_baseline(run_build(), baselines, "release")
    assert comparison is not None and comparison.passed, comparison.table()


def test_slowdown_inside_tolerance_passes_the_baseline(baselines):
    comparison = compare_to_baseline(run_build(slowdown=1.05), baselines, "release")
    assert comparison is not None and comparison.passed, comparison.table()


def test_thirty_percent_slowdown_fails_the_baseline_with_the_table(baselines):
    comparison = compare_to_baseline(run_build(slowdown=1.3), baselines, "release")
    assert comparison is not None and not comparison.passed
    table = comparison.table()
    print(table)  # what a failing gate shows (pytest -s to see it)
    assert "baseline 'release'" in table and "REGRESSION" in table
    regressed = {row.metric for row in comparison.regressions}
    assert {"e2e_ms.p95", "decode_tps.p50"} <= regressed


def test_a_looser_tolerance_lets_the_slowdown_pass_the_baseline(baselines):
    # The tolerance marker does this per test: @pytest.mark.tolerance(latency="+40%", ...)
    loose = {"latency": "+40%", "speed": "-40%"}
    comparison = compare_to_baseline(run_build(slowdown=1.3), baselines, "release",
                                     tolerances=loose)
    assert comparison is not None and comparison.passed, comparison.table()
