"""The fault suite: every way a server or a stream can break ends in the right outcome
class, a verdict that does not pass, and a report that says so; a silent or unreachable
server fails fast; throttling is counted (and retried when asked); a run that loses its
server stops, judged incomplete."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from fault_server import EXPECTED, MIXED, FaultServer
from junit_support import junit_properties

from pytest_ctxplat import ServerError, run_workload
from pytest_ctxplat.api import run_sync
from pytest_ctxplat.driver.http import StreamClient
from pytest_ctxplat.driver.limits import ClientLimits
from pytest_ctxplat.report.records import OUTCOMES, RequestRecord
from pytest_ctxplat.servers.attach import AttachedServer
from pytest_ctxplat.servers.probe import Capabilities

FAST = ClientLimits(first_byte_timeout_s=1.0, token_timeout_s=0.5, connect_timeout_s=2.0)
BODY = orjson.dumps({"model": "m", "prompt": [5, 6, 7], "max_tokens": 16, "stream": True})
TINY = {"users": 1, "turns": 2, "think_time_s": 0.0, "start_spread_s": 0.0,
        "system_prompt_tokens": 64, "user_tokens": 16, "output_tokens": 8, "block_size": 16}


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultServer]:
    with FaultServer(stall_s=3.0) as server:
        yield server


async def _one(base: str, limits: ClientLimits = FAST) -> RequestRecord:
    record = RequestRecord(session_id="s", user=0, index=0, prompt_tokens=3, max_tokens=16,
                           min_tokens=16)
    async with StreamClient(base, limits=limits) as client:
        await client.request("/v1/completions", BODY, record,
                             asyncio.get_running_loop().time)
    return record


@pytest.mark.parametrize("fault", sorted(EXPECTED))
def test_each_fault_ends_in_its_outcome_class(faults: FaultServer, fault: str) -> None:
    rec = run_sync(_one(faults.base(fault)))
    assert rec.outcome == EXPECTED[fault], (fault, rec)
    assert rec.end_s is not None and rec.end_s >= rec.start_s
    if rec.outcome == "ok":
        assert rec.error is None and rec.output_tokens == 16
        assert rec.finish_reason == "length"
    else:
        assert rec.error is not None and rec.error.startswith(
            ("HTTP", rec.outcome)), rec.error
    if fault in ("close_mid_stream", "eof_no_done"):
        assert rec.output_tokens == 2 and rec.ttft_s is not None  # partial, kept
    if fault == "short_with_usage":
        assert rec.output_tokens == 4 and "4 of 16 tokens" in str(rec.error)
    if fault == "throttle_retry_after":
        assert rec.status == 429 and rec.retry_after_s == 1.0
    if fault == "stall_first_byte":
        assert "first_byte_timeout_s=1" in str(rec.error) and rec.ttft_s is None
    if fault == "stall_between_tokens":
        assert "token_timeout_s=0.5" in str(rec.error) and rec.output_tokens == 1


def test_timeouts_bound_the_request(faults: FaultServer) -> None:
    t0 = time.monotonic()
    rec = run_sync(_one(faults.base("stall_between_tokens")))
    assert rec.outcome == "timeout"
    assert time.monotonic() - t0 < 2.0  # 0.5 s of silence, not the server's 3 s


def test_throttled_requests_are_retried_only_when_asked(faults: FaultServer) -> None:
    retrying = ClientLimits(retry_throttled=True, retry_limit=2, retry_wait_max_s=0.3)
    t0 = time.monotonic()
    rec = run_sync(_one(faults.base("throttle_retry_after"), retrying))
    # Retry-After: 1 is capped at retry_wait_max_s 0.3; two retries, still throttled
    assert rec.outcome == "throttled" and rec.retries == 2
    assert 0.5 < time.monotonic() - t0 < 3.0
    assert faults.requests["throttle_retry_after"] >= 3
    plain = run_sync(_one(faults.base("throttle_plain")))  # off by default: no retry
    assert plain.outcome == "throttled" and plain.retries == 0


def test_unreachable_and_silent_servers_fail_fast(faults: FaultServer) -> None:
    for base in ("http://127.0.0.1:9", faults.base("silent_post")):
        t0 = time.monotonic()
        with pytest.raises(ServerError) as info:
            run_workload(base, "chat", overrides=TINY, limits=FAST)
        assert time.monotonic() - t0 < 10, base
        assert "capability probe" in str(info.value)
    assert "no answer within 1 s" in str(info.value)


@pytest.mark.parametrize("fault", ["ok", "eof_no_done", "status_500", "unavailable",
                                   "short_with_usage"])
def test_a_run_against_a_fault_is_judged_and_reported(faults: FaultServer, fault: str,
                                                       tmp_path: Path) -> None:
    result = run_workload(faults.base(fault), "chat", overrides=TINY, limits=FAST,
                          slo={"error_rate_max": 0.0}, results_dir=tmp_path, name=fault,
                          reset_cache=False)
    outcome = EXPECTED[fault]
    data = json.loads((tmp_path / f"{fault}.json").read_text())
    m = data["metrics"]
    assert set(m["outcomes"]) == {*OUTCOMES, "in_flight"}
    assert m["outcomes"][outcome] == m["requests"] == 2
    assert [r["outcome"] for r in data["records"]] == [outcome, outcome]
    if outcome == "ok":
        assert m["error_rate"] == 0.0 and data["verdict"]["status"] == "pass"
    else:
        assert m["error_rate"] == 1.0 and m["errors"] == 2
        assert data["verdict"]["status"] == "fail" and not result.passed
        sample = data["errors_sample"][0]
        assert outcome in sample or sample.split(": ", 1)[1].startswith("HTTP")


def test_connection_failures_trip_the_circuit_breaker(tmp_path: Path) -> None:
    dead = AttachedServer("http://127.0.0.1:9")
    # the probe would refuse it: pretend it passed, as when a server dies after the probe
    dead.capabilities = Capabilities(token_id_prompts=True, stream_usage=True,
                                     cached_tokens=True, metrics=False)
    limits = ClientLimits(max_connect_failures=3, connect_timeout_s=1.0)
    result = run_workload(dead, "chat", overrides={**TINY, "users": 2, "turns": 50},
                          limits=limits, slo={"error_rate_max": 0.0}, results_dir=tmp_path,
                          name="breaker")
    m = result.metrics
    assert m["outcomes"]["connect_error"] >= 3 and m["requests"] < 100
    assert result.incomplete is not None and "circuit breaker" in result.incomplete
    assert result.verdict is not None and result.verdict.status == "incomplete"
    data = json.loads((tmp_path / "breaker.json").read_text())
    assert data["verdict"]["status"] == "incomplete"
    assert "3 connection failures in a row" in data["hit_rates"]["notes"]["run.stopped"]


MIXED_SUITE = """
import pytest

@pytest.mark.slo(error_rate_max=0.0)
@pytest.mark.workload("chat", users=1, turns=6, think_time_s=0.0, start_spread_s=0.0,
                      system_prompt_tokens=64, user_tokens=16, output_tokens=8,
                      block_size=16)
def test_mixed(ctxplat_run):
    ctxplat_run()
"""


def test_each_outcome_class_shows_in_every_report(faults: FaultServer,
                                                  tmp_path: Path) -> None:
    """One run meets one fault of each class; the result JSON, the JUnit properties,
    the terminal summary and the HTML report all count each class, and the gate fails."""
    (tmp_path / "test_mixed.py").write_text(MIXED_SUITE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = "
                                         "function\n")
    faults.mixed = 0
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA",
         f"--ctxplat-url={faults.base('mixed')}", "--ctxplat-first-byte-timeout=1",
         "--ctxplat-results=res", "--junitxml=junit.xml", "--ctxplat-html=report.html"],
        cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    classes = {EXPECTED[f] for f in MIXED}
    assert classes == {"ok", "http_status", "protocol_error", "incomplete", "throttled",
                       "timeout"}
    data = json.loads((tmp_path / "res" / "test_mixed.py_test_mixed.json").read_text())
    counts = data["metrics"]["outcomes"]
    assert {k for k, n in counts.items() if n} == classes, counts
    assert all(counts[c] == 1 for c in classes), counts
    assert data["metrics"]["errors"] == 5 and data["verdict"]["status"] == "fail"
    # JUnit: one property per class, the same counts
    props = junit_properties(tmp_path / "junit.xml")
    assert {c: int(props[f"ctxplat.outcome.{c}"]) for c in classes} == dict.fromkeys(
        classes, 1)
    assert props["ctxplat.verdict"] == "fail" and props["ctxplat.errors"] == "5"
    # the terminal summary's errors-by-class column names each error class
    line = next(x for x in out.splitlines() if x.startswith("test_mixed.py::test_mixed"))
    for short in ("1 http", "1 protocol", "1 timeout", "1 short", "1 429/503"):
        assert short in line, line
    # the HTML report's summary lists the outcome counts
    html = (tmp_path / "report.html").read_text()
    assert ("ok 1, http_status 1, timeout 1, protocol_error 1, incomplete 1, throttled 1"
            in html), html[:2000]
