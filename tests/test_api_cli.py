"""The library call and the ``ctxplat`` command work without pytest's plugin."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from pytest_ctxplat import ServerError, SLOViolation, run_workload
from pytest_ctxplat.servers import SimServer, start_sim
from pytest_ctxplat.sim.config import SimConfig
from pytest_ctxplat.sim.server import SimServerHandle

TINY = {"users": 2, "turns": 3, "think_time_s": 0.2, "start_spread_s": 1.0,
        "system_prompt_tokens": 512, "user_tokens": 64, "output_tokens": 8, "block_size": 16}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    server = start_sim({"speedup": 20.0})
    try:
        yield server
    finally:
        server.close()
    assert not server.alive()


def test_library_run_three_hit_rates_agree(sim: SimServer, tmp_path) -> None:
    # One user: requests never overlap, so the cache serves exactly what was designed.
    result = run_workload(sim, "chat", overrides={**TINY, "users": 1, "turns": 4},
                          slo={"cache_hit_rate_min": 0.5}, results_dir=tmp_path, name="lib")
    assert result.metrics["requests"] == 4 and result.metrics["errors"] == 0
    h = result.hit_rates
    assert h.designed is not None and h.request is not None and h.server is not None
    assert h.designed > 0.5
    assert abs(h.designed - h.request) < 0.01 and abs(h.request - h.server) < 0.01
    assert result.verdict is not None and result.verdict.passed
    assert (tmp_path / "lib.json").is_file()


def test_an_https_server_is_measured_like_a_plain_one(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # a server behind TLS with a private authority's certificate: the measured requests
    # (the own transport) and the control-plane calls (probe, /metrics) trust it through
    # SSL_CERT_FILE
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    with SimServerHandle(SimConfig(speedup=20.0),
                         tls=(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))) as server:
        server.start()
        assert server.url.startswith("https://")
        result = run_workload(server.url, "chat", overrides={**TINY, "users": 1, "turns": 4},
                              slo={"cache_hit_rate_min": 0.5})
    assert result.metrics["requests"] == 4 and result.metrics["errors"] == 0
    h = result.hit_rates
    assert h.request is not None and h.server is not None and abs(h.request - h.server) < 0.01
    assert result.verdict is not None and result.verdict.passed


def test_concurrent_users_request_and_server_rates_agree(sim: SimServer) -> None:
    # Two users may overlap on the shared prefix (a request cannot hit blocks another one is
    # still prefilling), so measured <= designed; the server's own counters always match
    # what it reported per request.
    result = run_workload(sim, "chat", overrides=TINY)
    h = result.hit_rates
    assert h.designed is not None and h.request is not None and h.server is not None
    assert abs(h.request - h.server) < 0.01
    assert h.request <= h.designed + 0.01


def test_reset_cache_isolates_runs(sim: SimServer) -> None:
    a = run_workload(sim, "chat", overrides=TINY, token_salt=1)
    b = run_workload(sim, "chat", overrides=TINY, token_salt=1)
    assert a.hit_rates.request == pytest.approx(b.hit_rates.request, abs=1e-9)
    c = run_workload(sim, "chat", overrides=TINY, token_salt=1, reset_cache=False)
    assert c.hit_rates.request > c.hit_rates.designed + 0.05  # warm cache from run b


def test_check_raises_slo_violation(sim: SimServer) -> None:
    with pytest.raises(SLOViolation, match=r"ttft_p50_ms\s+<= 0.001\s+[\d.]+\s+[-+\d.]+%\s+FAIL"):
        run_workload(sim, "chat", overrides=TINY, slo={"ttft_p50_ms": 0.001}, check=True)


def test_unreachable_server_fails_fast_with_the_probe_findings(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(ServerError, match=r"the server at http://127\.0\.0\.1:9 is "
                                          r"unreachable \(capability probe: .*connection "
                                          r"failed"):
        run_workload("http://127.0.0.1:9", "chat", overrides=TINY, results_dir=tmp_path,
                     slo={"ttft_p95_ms": 100})
    assert time.monotonic() - start < 15
    assert list(tmp_path.iterdir()) == []  # nothing was played
    proc = subprocess.run([sys.executable, "-m", "pytest_ctxplat.cli", "run", "chat",
                           "--url", "http://127.0.0.1:9"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 3, proc.stderr  # a server or infrastructure error
    assert "ctxplat run: the server at http://127.0.0.1:9 is unreachable" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_run_against_started_sim(tmp_path) -> None:
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_ctxplat.cli", "run", "chat", "--sim-speedup", "20",
         *(f"--set={k}={v}" for k, v in TINY.items()), "--slo", "error_rate_max=0",
         "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "hit rate designed / request / server" in proc.stdout
    assert json.loads(out.read_text())["metrics"]["requests"] == 6


def test_cli_usage_error_exit_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest_ctxplat.cli", "run", "chat",
                           "--set", "userz=3", "--url", "http://127.0.0.1:9"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "ctxplat run: --set: userz: unknown key; valid: " in proc.stderr


def test_cli_breach_exit_1(sim: SimServer) -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest_ctxplat.cli", "run", "chat",
                           "--url", sim.url, *(f"--set={k}={v}" for k, v in TINY.items()),
                           "--slo", "ttft_p50_ms=0.001"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert "SLO breached" in proc.stderr
