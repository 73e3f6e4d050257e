"""The API key goes only to the configured endpoint, in its request headers, and never
into logs, result JSON, JUnit XML, the HTML report, the terminal or exception text: a
key is planted and every output is searched, with a server that echoes it back in its
errors (the failing-request paths)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_server import FaultServer

from pytest_ctxplat import ServerError, run_workload

KEY = "sk-planted-4c0ffee5eed0123456789"
ENV = "CTXPLAT_TEST_PLANTED_KEY"
PART = KEY[:14].encode()  # not even a part of the key may show (a cut error text)

TEST = """
import pytest

@pytest.mark.slo(error_rate_max=0.0)
@pytest.mark.workload("chat", users=1, turns=2, think_time_s=0.0, start_spread_s=0.0,
                      system_prompt_tokens=64, user_tokens=16, output_tokens=8,
                      block_size=16)
def test_run(ctxplat_run):
    ctxplat_run()
"""


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


def _everything(folder: Path) -> Iterator[tuple[Path, bytes]]:
    for path in folder.rglob("*"):
        if path.is_file():
            yield path, path.read_bytes()


@pytest.mark.parametrize("fault", ["ok", "echo_headers", "echo_in_stream", "echo_always"])
def test_a_planted_key_is_in_no_output(faults: FaultServer, fault: str,
                                       tmp_path: Path) -> None:
    (tmp_path / "test_run.py").write_text(TEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = "
                                         "function\n")
    env = {**os.environ, ENV: KEY}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-rA",
         f"--ctxplat-url={faults.base(fault)}", f"--ctxplat-api-key-env={ENV}",
         "--ctxplat-results=res", "--junitxml=junit.xml", "--ctxplat-html=report.html"],
        cwd=tmp_path, env=env, capture_output=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert PART not in out, out.decode(errors="replace")
    written = dict(_everything(tmp_path))
    assert tmp_path / "junit.xml" in written
    if fault != "echo_always":  # the probe refuses that server: nothing is played
        assert any(p.suffix == ".json" for p in written), sorted(written)
        assert tmp_path / "report.html" in written
    leaks = [str(p) for p, data in written.items() if PART in data]
    assert leaks == []
    # the key did reach the server, where it belongs: the echo proves it was sent
    if fault == "echo_headers":
        assert b"***" in (tmp_path / "junit.xml").read_bytes()


def test_the_key_is_not_in_exception_text(faults: FaultServer,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_ctxplat.servers.attach import AttachedServer

    monkeypatch.setenv(ENV, KEY)
    with pytest.raises(ServerError) as info:
        run_workload(AttachedServer(faults.base("echo_always"), api_key_env=ENV), "chat")
    assert KEY[:14] not in str(info.value) and "***" in str(info.value)
    result = run_workload(AttachedServer(faults.base("echo_headers"), api_key_env=ENV),
                          "chat", overrides={"users": 1, "turns": 1, "output_tokens": 4})
    assert result.metrics["outcomes"]["http_status"] == 1
    assert KEY[:14] not in repr(result.to_dict()) and KEY[:14] not in repr(result)
