"""Nothing measured is lost: runs stopped at random moments by SIGINT or SIGTERM (what CI
timeouts send), or by pytest-timeout, leave complete, valid result JSON for what finished
(judged "incomplete") and valid JUnit XML; a run's result is also written as it goes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from junitparser import JUnitXml

TRIALS = int(os.environ.get("CTXPLAT_KILL_TRIALS", "20"))

LONG_TEST = """
import pathlib
import pytest

@pytest.mark.slo(ttft_p95_ms=60000, error_rate_max=0.0)
@pytest.mark.workload("chat", users=2, turns=2000, think_time_s=0.5, start_spread_s=0.0,
                      system_prompt_tokens=256, user_tokens=32, output_tokens=8,
                      block_size=16, duration_s=600)
def test_long(ctxplat_run):
    pathlib.Path("started").write_text("1")
    ctxplat_run()
"""


def _start(folder: Path, *extra: str) -> subprocess.Popen[bytes]:
    (folder / "test_long.py").write_text(LONG_TEST)
    (folder / "pytest.ini").write_text("[pytest]\n")
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
         "--ctxplat-sim-speedup=40", "--ctxplat-timing-skew-max-ms=inf",
         "--ctxplat-results=res", "--junitxml=junit.xml",
         *extra, "test_long.py"],
        cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _check_files(folder: Path, out: str) -> dict[str, object] | None:
    """Every file written is valid; when the test had started, both files exist."""
    started = (folder / "started").exists()
    junit = folder / "junit.xml"
    if started:
        assert junit.exists(), out
    if junit.exists():
        suites = list(JUnitXml.fromfile(str(junit)))  # parses, or raises
        assert suites, out
    results = sorted((folder / "res").glob("*.json"))
    assert not list((folder / "res").glob("*.tmp")), out  # written whole, then renamed
    data = None
    for path in results:
        data = json.loads(path.read_text())
        assert data["schema_version"] >= 1 and isinstance(data["records"], list)
        verdict = data["verdict"]
        assert verdict is not None and verdict["status"] in ("pass", "fail", "incomplete")
        if data["interrupted"]:
            assert verdict["status"] == "incomplete" and "interrupted" in data["incomplete"]
        for r in data["records"]:
            assert r["outcome"] in (None, "ok", "cancelled", "timeout", "protocol_error",
                                    "connect_error", "http_status", "incomplete", "throttled")
    return data


@pytest.mark.parametrize("trial", range(TRIALS))
def test_a_run_stopped_at_a_random_moment_leaves_valid_files(tmp_path: Path,
                                                             trial: int) -> None:
    rng = random.Random(trial)
    sig = (signal.SIGTERM, signal.SIGINT)[trial % 2]
    proc = _start(tmp_path)
    time.sleep(rng.uniform(0.2, 4.0))
    proc.send_signal(sig)
    out = proc.communicate(timeout=90)[0].decode(errors="replace")
    data = _check_files(tmp_path, out)
    if data is not None:  # a result exists only for a run that was under way
        assert (tmp_path / "started").exists()
        assert data["interrupted"] is True and data["verdict"]["status"] == "incomplete"
        assert data["incomplete"].startswith(("interrupted", "in progress")), data["incomplete"]


def test_sigterm_mid_run_writes_an_incomplete_result_and_junit(tmp_path: Path) -> None:
    proc = _start(tmp_path)
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(2.0)  # some requests finish
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=90)[0].decode(errors="replace")
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    data = _check_files(tmp_path, out)
    assert data is not None and data["interrupted"] is True
    assert data["verdict"]["status"] == "incomplete"
    assert any(r["outcome"] == "ok" for r in data["records"])
    assert "Traceback" not in out


def test_pytest_timeout_leaves_the_result_and_a_failure(tmp_path: Path) -> None:
    proc = _start(tmp_path, "--timeout=4", "--timeout-method=signal")
    out = proc.communicate(timeout=120)[0].decode(errors="replace")
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, out
    data = _check_files(tmp_path, out)
    assert data is not None and data["interrupted"] is True
    suite = next(iter(JUnitXml.fromfile(str(tmp_path / "junit.xml"))))
    case = next(iter(suite))
    assert case.result and "Timeout" in (case.result[0].message or "")


def test_a_running_run_writes_checkpoints(tmp_path: Path) -> None:
    """Even a SIGKILL (nothing can be written then) leaves the last checkpoint."""
    proc = _start(tmp_path)
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    checkpoint = tmp_path / "res" / "test_long.py_test_long.json"
    while not checkpoint.exists():
        assert time.monotonic() < deadline + 30 and proc.poll() is None, "no checkpoint"
        time.sleep(0.2)
    proc.kill()
    proc.communicate(timeout=30)
    data = json.loads(checkpoint.read_text())
    assert data["incomplete"].startswith("in progress")
    assert data["verdict"]["status"] == "incomplete"
    assert any(r["outcome"] == "ok" for r in data["records"])


def test_a_run_ending_after_a_noted_signal_is_interrupted_not_a_dead_server() -> None:
    # SIGTERM noted by the adapter, then the session's teardown stops the server before
    # the run's loop sees the interrupt: the result must still say interrupted
    from pytest_ctxplat import interrupts, simulate

    interrupts.note_signal("SIGTERM")
    try:
        r = simulate("chat", "h100-llama8b", overrides={"users": 2, "max_requests": 4},
                     slo={"error_rate_max": 0.0}, check=False)
    finally:
        interrupts.clear()
    assert r.interrupted and r.incomplete == "interrupted (SIGTERM)"
    assert r.verdict is not None and r.verdict.status == "incomplete"
    assert interrupts.signalled() is None
