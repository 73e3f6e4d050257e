"""Plugin behaviour through pytester: options, markers, usage errors, JSON, JUnit."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from junit_support import junit_properties
from junitparser import JUnitXml

pytest_plugins = ["pytester"]

# functional checks at speed-up 20, where the client's timings stray from the model's
# (docs/concepts/simulator.md, "Timing over HTTP"): the validity bound is lifted
FAST = ["--ctxplat-sim-speedup=20", "--ctxplat-timing-skew-max-ms=inf", "-p",
        "no:cacheprovider"]

TINY_TEST = """
import pytest

@pytest.mark.slo(ttft_p95_ms=5000, cache_hit_rate_min=0.3, error_rate_max=0)
@pytest.mark.workload("chat", users=2, turns=3, think_time_s=0.2, start_spread_s=1.0,
                      system_prompt_tokens=512, user_tokens=64, output_tokens=8, block_size=16)
def test_tiny(ctxplat_run):
    result = ctxplat_run()
    assert result.metrics["requests"] == 6
"""


@pytest.fixture(autouse=True)
def _quiet_asyncio_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")


def _sim_processes(parent_pid: int) -> list[int]:
    """Simulator processes started by ``parent_pid`` that are still alive."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"pytest_ctxplat.sim" in cmd and str(parent_pid).encode() in cmd:
            found.append(int(entry.name))
    return found


def _served(sim_pid: int) -> float:
    """Requests the simulator with ``sim_pid`` has finished (from its /metrics)."""
    argv = (Path("/proc") / str(sim_pid) / "cmdline").read_bytes().decode().split("\0")
    try:
        port = int(Path(argv[argv.index("--ready-file") + 1]).read_text())
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except (OSError, ValueError, httpx.HTTPError):
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total"))


def test_help_lists_options_with_ini_twins(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines([
        "*ctxplat*",
        "*--ctxplat-server=CTXPLAT_SERVER*",
        "*--ctxplat-url=CTXPLAT_URL*",
        "*--ctxplat-results=CTXPLAT_RESULTS*",
        "*--ctxplat-seed=CTXPLAT_SEED*",
        "*ctxplat_server (string)*",
        "*ctxplat_results (string)*",
    ])


def test_markers_registered_with_signatures(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines([
        "@pytest.mark.slo(*ttft_p95_ms=None*cache_hit_source=*",
        "@pytest.mark.workload(name, **overrides)*",
    ])


def test_marker_typo_fails_before_any_server_starts(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.slo(ttft_p95=100)
        def test_x(ctxplat_run):
            ctxplat_run()
    """)
    start = time.monotonic()
    result = pytester.runpytest("--ctxplat-results=res")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_marker_typo*::test_x: ttft_p95: unknown key; "
                                 "valid: *ttft_p95_ms*"])
    assert not (pytester.path / "res" / "logs").exists()  # no server was started
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(("marker", "match"), [
    ('workload("chat", userz=3)', "*::test_x: userz: unknown key; valid: *users*"),
    ('workload("nope")', "*unknown workload 'nope'; available: *chat*"),
    ('workload("chat", users="3")', "*::test_x: users: must be an integer, got '3'*"),
    ("slo(cache_hit_rate_min=1.5)", "*::test_x: cache_hit_rate_min: must be <= 1, got 1.5*"),
    ("slo(ttft_p95_ms=-5)", "*::test_x: ttft_p95_ms: must be >= 0, got -5*"),
    ("slo(output_tokens_per_request_min=1.5)",
     "*::test_x: output_tokens_per_request_min: must be an integer, got 1.5*"),
])
def test_bad_markers_are_usage_errors(pytester: pytest.Pytester, marker: str, match: str
                                      ) -> None:
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.{marker}
        def test_x(ctxplat_run):
            ctxplat_run()
    """)
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([match])


def test_bad_options_name_valid_values(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    r = pytester.runpytest("--ctxplat-server=gpu")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*unknown server 'gpu'; valid: sim, url*"])
    r = pytester.runpytest("--ctxplat-server=url")
    r.stderr.fnmatch_lines(["*--ctxplat-server=url needs --ctxplat-url*"])
    r = pytester.runpytest("--ctxplat-seed=abc")
    r.stderr.fnmatch_lines(["*--ctxplat-seed: expected a int, got 'abc'*"])
    r = pytester.runpytest("--ctxplat-url=localhost:8000")
    r.stderr.fnmatch_lines(["*--ctxplat-url must start with http:// or https://*"])


def test_ini_twins_are_read(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n"
                     "ctxplat_seed = 7\nctxplat_results = out\n")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["ctxplat: server=sim seed=7 results=*out reset_cache=True*"])


def test_run_writes_json_junit_and_summary(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_tiny=TINY_TEST)
    result = pytester.runpytest("--ctxplat-results=res", "--junitxml=r.xml", *FAST)
    result.assert_outcomes(passed=1)
    # 6 requests cannot bound a p95: inconclusive, which passes with a warning by default
    result.stdout.fnmatch_lines(["*ctxplat SLO summary*",
                                 "*test_tiny.py::test_tiny*passed*inconclusive*",
                                 "WARNING test_tiny.py::test_tiny: SLO inconclusive (passed*"
                                 "ttft_p95_ms [[]*, inf] vs 5000*"])
    files = list((pytester.path / "res").glob("*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["schema_version"] == 1
    assert data["plugin_version"]
    assert data["seed"] == 0
    assert data["target"]["launcher"] == "sim"
    assert data["slo"]["ttft_p95_ms"] == 5000
    assert data["verdict"]["passed"] is True
    assert len(data["records"]) == 6
    assert data["hit_rates"]["request"] > 0.3
    props = junit_properties(pytester.path / "r.xml")
    _assert_properties_match_json(props, data)


def _assert_properties_match_json(props: dict[str, str], data: dict[str, Any]) -> None:
    """Every ctxplat property equals the result JSON's figure (none is "None")."""
    m, o, h = data["metrics"], data["observed"], data["hit_rates"]
    expected: dict[str, Any] = {
        "server": f"{data['target']['launcher']}:{data['target']['profile']}",
        "profile": data["target"]["profile"], "requests": m["requests"],
        "errors": m["errors"], "error_rate": m["error_rate"],
        "ttft_p50_ms": o["ttft_ms.p50"], "ttft_p95_ms": o["ttft_ms.p95"],
        "ttft_p99_ms": o["ttft_ms.p99"], "itl_p99_ms": o["itl_ms.p99"],
        "e2e_p95_ms": o["e2e_ms.p95"], "decode_tps_p10": o["decode_tps.p10"],
        "decode_tps_p50": o["decode_tps.p50"],
        "output_tokens_per_s": m["output_tokens_per_s"],
        "hit_rate_designed": h["designed"], "hit_rate_request": h["request"],
        "hit_rate_server": h["server"], "slo_passed": data["verdict"]["passed"],
        "verdict": data["verdict"]["status"],
        **{f"outcome.{k}": n for k, n in m["outcomes"].items() if n},
    }
    for check in data["verdict"]["checks"]:
        expected[f"slo.{check['key']}.target"] = check["target"]
        expected[f"slo.{check['key']}.observed"] = check["observed"]
        expected[f"slo.{check['key']}.result"] = "pass" if check["passed"] else "fail"
        expected[f"slo.{check['key']}.verdict"] = check["status"]
        if check["interval"] is not None:
            low, high = check["interval"]  # null: no bound at this sample size
            low, high = (-math.inf if low is None else low), (math.inf if high is None else high)
            expected[f"slo.{check['key']}.interval"] = f"[{low:.4g}, {high:.4g}]"
    expected.update({"requests_judged": data["window"]["judged"],
                     "confidence": data["verdict"]["confidence"],
                     "on_inconclusive": data["slo"]["on_inconclusive"],
                     "effective_ttft_p95_ms": o["effective_ttft_ms.p95"],
                     "runs": data["window"]["runs"]})
    t = data["timing"]  # client minus the simulator's model time
    expected.update({"ttft_skew_p50_ms": t["ttft_skew_ms"]["p50"],
                     "ttft_skew_p95_ms": t["ttft_skew_ms"]["p95"],
                     "e2e_skew_p95_ms": t["e2e_skew_ms"]["p95"], "timing_valid": t["valid"],
                     "timing_invalid": t["reason"]})
    got = {k[len("ctxplat."):]: v for k, v in props.items() if k.startswith("ctxplat.")}
    assert "None" not in got.values()
    for key, value in expected.items():
        if value is None:
            assert key not in got, key
        elif isinstance(value, float):
            assert float(got[key]) == pytest.approx(value, abs=1e-4), key
        else:
            assert got[key] == str(value), key
    assert set(got) <= set(expected) | {"hit_rate_external"}


def test_breach_fails_with_table_and_keeps_results(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(TINY_TEST.replace("ttft_p95_ms=5000", "ttft_p95_ms=0.0001"))
    result = pytester.runpytest("--ctxplat-results=res", "--junitxml=r.xml", *FAST)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*SLOViolation: SLO breached (1 of 3 objectives)*",
        "*metric*target*observed*margin*result*",
        "*ttft_p95_ms*<= 0.0001*FAIL*",
        "*cache_hit_rate_min*>= 0.3*ok*",
        "*6 requests (6 ok) in*",
    ])
    data = json.loads(next((pytester.path / "res").glob("*.json")).read_text())
    assert data["verdict"]["passed"] is False and data["verdict"]["status"] == "fail"
    # the verdict table first, no event-loop frames, the same short story in JUnit
    out = result.stdout.str()
    failure = out[out.index("_ test_tiny _"):out.index("ctxplat SLO summary")]
    assert "asyncio" not in failure and "run_until_complete" not in failure
    assert "During handling" not in failure and len(failure.splitlines()) < 20
    suite = next(iter(JUnitXml.fromfile(str(pytester.path / "r.xml"))))
    text = next(iter(suite)).result[0].text
    assert text.startswith("SLOViolation: SLO breached (1 of 3 objectives)")
    assert "asyncio" not in text and len(text.splitlines()) < 15


def test_an_slo_marker_without_a_run_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.slo(ttft_p95_ms=100)
        def test_forgot():
            assert True
    """)
    result = pytester.runpytest(*FAST)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test_forgot has an slo marker but never called "
                                 "ctxplat_run*"])


def test_bad_timeout_and_results_options_are_usage_errors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--ctxplat-token-timeout=0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--ctxplat-token-timeout: must be > 0, got 0.0*"])
    (pytester.path / "afile").write_text("")
    result = pytester.runpytest("--ctxplat-results=afile/res")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--ctxplat-results: cannot write results to *afile/res: "
                                 "*afile is not a directory*"])
    result = pytester.runpytest("--ctxplat-api-key-env=CTXPLAT_SURELY_UNSET_VARIABLE")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*CTXPLAT_SURELY_UNSET_VARIABLE (the API key) is not set*"])


def test_check_false_returns_result(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(TINY_TEST.replace("ttft_p95_ms=5000", "ttft_p95_ms=0.0001")
                        .replace("ctxplat_run()", "ctxplat_run(check=False)")
                        + "    assert not result.verdict.passed\n")
    pytester.runpytest(*FAST).assert_outcomes(passed=1)


def test_async_tests_are_supported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.asyncio
        @pytest.mark.workload("chat", users=2, turns=2, think_time_s=0.01, output_tokens=4,
                              system_prompt_tokens=256, user_tokens=32)
        async def test_await(ctxplat_run):
            result = await ctxplat_run.arun()
            assert result.metrics["ok"] == 4

        @pytest.mark.asyncio
        @pytest.mark.workload("chat", users=1, turns=2, think_time_s=0.01, output_tokens=4)
        async def test_sync_call_inside_loop(ctxplat_run):
            assert ctxplat_run().metrics["ok"] == 2
    """)
    pytester.runpytest(*FAST, "-p", "asyncio").assert_outcomes(passed=2)


def test_workload_yaml_from_project_dir(pytester: pytest.Pytester) -> None:
    (pytester.path / "workloads").mkdir()
    (pytester.path / "workloads" / "mine.yaml").write_text(
        "kind: chat\nusers: 1\nturns: 2\nthink_time_s: 0.01\noutput_tokens: 4\n")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.workload("mine", turns=3)
        def test_x(ctxplat_run):
            assert ctxplat_run().metrics["requests"] == 3
    """)
    pytester.runpytest(*FAST).assert_outcomes(passed=1)


def test_xdist_keeps_figures_in_summary(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a=TINY_TEST, test_b=TINY_TEST)
    result = pytester.runpytest_subprocess("-n", "2", "--junitxml=r.xml", *FAST)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*ctxplat SLO summary*"])
    result.stdout.fnmatch_lines(["*test_a.py::test_tiny*pass*"])
    result.stdout.fnmatch_lines(["*test_b.py::test_tiny*pass*"])


def test_no_process_left_after_failure(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(TINY_TEST.replace("== 6", "== 999"))
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *FAST, "-q"], cwd=pytester.path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out.decode()
    assert _sim_processes(proc.pid) == []


def test_no_process_left_after_ctrl_c(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.workload("chat", users=2, turns=50, think_time_s=0.2)
        def test_long(ctxplat_run):
            ctxplat_run()
    """)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                             "--ctxplat-results=res"], cwd=pytester.path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while not _sim_processes(proc.pid):
        assert time.monotonic() < deadline and proc.poll() is None, "simulator never started"
        time.sleep(0.1)
    # Interrupt only once the simulator has served a few requests (it may be slow under load).
    while _served(_sim_processes(proc.pid)[0]) < 3:
        assert time.monotonic() < deadline and proc.poll() is None, "no request completed"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out.decode()
    time.sleep(0.5)
    assert _sim_processes(proc.pid) == []
    # what was measured before the interruption is written
    data = json.loads(next((pytester.path / "res").glob("*.json")).read_text())
    assert data["interrupted"] is True
    assert any(r["end_s"] is not None for r in data["records"])


def test_plugin_import_is_cheap() -> None:
    code = ("import sys, pytest_ctxplat.plugin; "
            "print(','.join(m for m in ('numpy', 'httpx', 'aiohttp', 'starlette') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.stdout.strip() == ""
