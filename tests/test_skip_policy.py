"""The CI skip policy (skip_policy.py): with CTXPLAT_CI set, a skip that is not on the
allow-list fails the session and is named with its reason; allow-listed skips and
expected failures do not; without CTXPLAT_CI nothing changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SUITE = """
import pytest

def test_runs():
    pass

@pytest.mark.skipif(True, reason="chromium not installed")
def test_needs_chromium():
    pass

def test_needs_traces():
    pytest.skip("sample traces not found")

@pytest.mark.xfail(reason="known", strict=True)
def test_known_bug():
    assert False
"""


@pytest.fixture
def policy(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A project that loads the policy as tests/conftest.py does, with its own
    allow-list (empty until a test writes it) and CTXPLAT_CI unset. Runs are
    subprocesses: an in-process run would unload modules its plugins import late."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]))
    pytester.makeconftest('pytest_plugins = ["skip_policy"]\n')
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    allowlist = pytester.path / "allow.txt"
    allowlist.write_text("# nothing yet\n")
    monkeypatch.setenv("CTXPLAT_SKIP_ALLOWLIST", str(allowlist))
    monkeypatch.delenv("CTXPLAT_CI", raising=False)
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def _run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    """pytest in a subprocess, without plugins the policy does not need (faster)."""
    return project.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:ctxplat",
                                        "-p", "no:hypothesispytest", *args)


def test_without_ci_skips_pass_as_before(policy: pytest.Pytester) -> None:
    result = _run(policy)
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    assert "not allowed" not in result.stdout.str()


def test_in_ci_an_unexpected_skip_fails_the_session_and_is_named(
        policy: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTXPLAT_CI", "1")
    result = _run(policy)
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)  # the outcomes stay honest
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*skips not allowed in CI (CTXPLAT_CI is set)*",
        "SKIPPED (not allowed) test_suite.py::test_needs_chromium: chromium not installed",
        "SKIPPED (not allowed) test_suite.py::test_needs_traces: sample traces not found",
        "2 unexpected skip(s) fail this session*allow.txt",
    ])
    assert "test_known_bug" not in result.stdout.str().split("not allowed in CI")[1]


def test_in_ci_allow_listed_skips_pass(policy: pytest.Pytester,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTXPLAT_CI", "1")
    (policy.path / "allow.txt").write_text(
        "test_suite.py::test_needs_*  # both need what this machine may lack\n")
    result = _run(policy)
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    # one entry left out: that skip alone fails the session
    (policy.path / "allow.txt").write_text(
        "test_suite.py::test_needs_traces  # the traces are fetched separately\n")
    result = _run(policy)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["SKIPPED (not allowed) test_suite.py::test_needs_chromium:*"])
    assert "(not allowed) test_suite.py::test_needs_traces" not in result.stdout.str()


def test_in_ci_a_module_skipped_at_collection_fails_the_session(
        policy: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTXPLAT_CI", "yes")
    policy.makepyfile(test_mod='import pytest\npytest.importorskip("no_such_module_xyz")\n'
                               "def test_x():\n    pass\n")
    result = _run(policy, "test_mod.py")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["SKIPPED (not allowed) test_mod.py: *no_such_module_xyz*"])


def test_an_entry_needs_its_reason(policy: pytest.Pytester,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTXPLAT_CI", "1")
    (policy.path / "allow.txt").write_text("test_suite.py::test_needs_chromium\n")
    result = _run(policy)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*allow.txt:1: an entry is 'TEST-ID-PATTERN  # why it may "
                                 "skip in CI'*"])


def test_off_values_leave_it_off(policy: pytest.Pytester,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for value in ("", "0", "false"):
        monkeypatch.setenv("CTXPLAT_CI", value)
        assert _run(policy).ret == pytest.ExitCode.OK


def test_in_ci_under_xdist_the_controller_fails_the_session(
        policy: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("xdist")
    monkeypatch.setenv("CTXPLAT_CI", "1")
    result = _run(policy, "-n", "2")
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*skips not allowed in CI*",
                                 "SKIPPED (not allowed) test_suite.py::test_needs_chromium*",
                                 "SKIPPED (not allowed) test_suite.py::test_needs_traces*"])


def test_the_project_allowlist_is_well_formed() -> None:
    from skip_policy import ALLOWLIST, load_allowlist

    entries = load_allowlist(ALLOWLIST)
    assert entries and all(e.why for e in entries)
