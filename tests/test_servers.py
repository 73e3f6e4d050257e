"""Server profiles, vLLM command lines (GPU profiles included), the watchdog, the
capability probe, attaching with an API key, and running tests across profiles."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from process_support import processes_with_env
from servers_support import LimitedServer

from pytest_ctxplat.builtin import SERVERS, find_yaml, yaml_names
from pytest_ctxplat.config import key_paths
from pytest_ctxplat.errors import ConfigError, ServerStartError
from pytest_ctxplat.report.compare import profile_comparison
from pytest_ctxplat.servers.profiles import (
    ServerProfile,
    available_profiles,
    find_profile,
    load_profile,
    parse_profile,
)
from pytest_ctxplat.servers.vllm import LaunchPlan, build_launch, find_vllm_python

pytest_plugins = ["pytester"]

# functional checks at speed-up 20, where the client's timings stray from the model's
# (docs/concepts/simulator.md, "Timing over HTTP"): the validity bound is lifted
FAST = ["--ctxplat-sim-speedup=20", "--ctxplat-timing-skew-max-ms=inf", "-p",
        "no:cacheprovider"]
WORKDIR = Path("/w")


def _write(tmp_path: Path, text: str, name: str = "prof.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _plan(profile_yaml: str, tmp_path: Path) -> LaunchPlan:
    profile = load_profile(_write(tmp_path, profile_yaml))
    return build_launch(profile, python="PY", model="/models/m", port=8123, workdir=WORKDIR)


def _flag(argv: list[str], flag: str) -> str:
    assert flag in argv, (flag, argv)
    return argv[argv.index(flag) + 1]


# -- profile files ----------------------------------------------------------------------

def test_every_bundled_profile_is_valid() -> None:
    names = available_profiles()
    assert names[:2] == ["sim", "url"]
    for required in ("vllm-cpu", "vllm-cpu-disk", "vllm-h100-hbm", "vllm-h100-cpu-offload",
                     "vllm-h100-lmcache-dram", "vllm-h100-lmcache-disk", "vllm-h200-hbm",
                     "vllm-h200-cpu-offload", "vllm-h200-lmcache-dram",
                     "vllm-h200-lmcache-disk"):
        assert required in names
    for name in yaml_names(SERVERS):
        profile = find_profile(name)
        assert profile.name == name
        assert profile.description, name


@pytest.mark.parametrize(("text", "where", "message"), [
    ("launcher: vllm\nmodel: tiny\nkv:\n  prefix_caching: true\n  offlaod: {}\n",
     ":5: kv.offlaod:", "unknown key; valid: disk_store, kvbm, lmcache, offload, "
     "prefix_caching, transfer_config"),
    ("launcher: vllm\nmodel: tiny\nengine:\n  max_model_len: big\n",
     ":4: engine.max_model_len:", "must be an integer, got 'big'"),
    ("launcher: gpu\n", ":1: launcher:", "unknown launcher 'gpu'; valid: sim, vllm, "
     "vllm-cpu, url"),
    ("launcher: vllm\n", ":1: model:", "vLLM profiles need a model"),
    ("launcher: vllm\nmodel: tiny\nkv:\n  kvbm:\n    cpu_cache_gb: 10\n  disk_store: {}\n",
     ":6: kv.disk_store:", "only one KV connector per profile; also set: kv.kvbm"),
    ("launcher: vllm\nmodel: tiny\nenv:\n  A: 1\n  A: 2\n", ":5:", "duplicate key 'A' "
     "(first at line 4)"),
    ("launcher: vllm-cpu\nmodel: tiny\nkv:\n  offload:\n    size_gib: 4\n",
     ":4: kv.offload:", "only runs on CUDA / XPU"),
    ("launcher: vllm\nmodel: tiny\nkv:\n  offload:\n    size_gib: 4\n    backend: nvme\n",
     ":6: kv.offload.backend:", "must be one of native, lmcache, got 'nvme'"),
    ("launcher: vllm\nmodel: tiny\nengine:\n  gpu_memory_utilization: 1.5\n",
     ":4: engine.gpu_memory_utilization:", "must be <= 1, got 1.5"),
    ("launcher: url\n", ":1: url:", "needs url: http://HOST:PORT"),
    ("launcher: vllm\nmodel: tiny\nprefix_caching: false\n", ":3: prefix_caching:",
     "unknown key"),
])
def test_bad_profile_names_file_line_and_key(tmp_path: Path, text: str, where: str,
                                              message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert str(info.value).startswith(f"{path}{where}"), str(info.value)
    assert message in str(info.value)


def test_sim_settings_are_checked_against_the_simulator(tmp_path: Path) -> None:
    path = _write(tmp_path, "launcher: sim\nsim:\n  kv_capacity: 5\n")
    with pytest.raises(ConfigError, match=r"prof.yaml:3: sim.kv_capacity: unknown key; "
                                          r"valid: block_size,"):
        load_profile(path)


def test_lookup_order_and_unknown_name(tmp_path: Path) -> None:
    own = tmp_path / "own"
    own.mkdir()
    _write(own, "launcher: sim\ndescription: mine\n", "vllm-cpu.yaml")
    assert find_profile("vllm-cpu", [own]).description == "mine"  # first dir wins
    assert find_profile("vllm-cpu").launcher == "vllm-cpu"  # bundled
    assert find_profile("sim").launcher == "sim"  # built in, no file needed
    with pytest.raises(ConfigError, match=r"unknown server 'nope'; valid: sim, url, .*vllm-cpu"):
        find_profile("nope", [own])


def test_schema_keys_are_documented() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "reference" / "servers.md").read_text()

    keys = key_paths(ServerProfile)
    assert "kv.offload.size_gib" in keys and "engine.dtype" in keys
    missing = [k for k in keys if f"`{k}`" not in doc]
    assert missing == []


# -- vLLM command lines -----------------------------------------------------------------

def test_vllm_cpu_command_line_follows_the_recipe() -> None:
    plan = build_launch(find_profile("vllm-cpu"), python="PY", model="/m", port=9000,
                        workdir=WORKDIR)
    assert plan.argv[:4] == ["PY", "-m", "vllm.entrypoints.openai.api_server", "--model"]
    for flag in ("--enforce-eager", "--enable-prefix-caching",
                 "--enable-prompt-tokens-details"):
        assert flag in plan.argv
    assert _flag(plan.argv, "--load-format") == "dummy"
    assert _flag(plan.argv, "--dtype") == "bfloat16"
    assert _flag(plan.argv, "--max-model-len") == "8192"
    assert _flag(plan.argv, "--host") == "127.0.0.1"
    assert _flag(plan.argv, "--port") == "9000"
    assert "--gpu-memory-utilization" not in plan.argv
    assert plan.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert plan.env["HF_HUB_OFFLINE"] == "1"
    assert plan.env["VLLM_CACHE_ROOT"] == "/w/cache" and plan.env["TMPDIR"] == "/w/tmp"
    assert plan.env["VLLM_SERVER_DEV_MODE"] == "1"


def test_vllm_cpu_disk_uses_example_connector_in_the_session_folder() -> None:
    plan = build_launch(find_profile("vllm-cpu-disk"), python="PY", model="/m", port=1,
                        workdir=WORKDIR)
    cfg = json.loads(_flag(plan.argv, "--kv-transfer-config"))
    assert cfg == {"kv_connector": "ExampleConnector", "kv_role": "kv_both",
                   "kv_connector_extra_config": {"shared_storage_path": "/w/kv-store"}}


@pytest.mark.parametrize("gpu", ["h100", "h200"])
def test_gpu_profiles_build_their_command_lines(gpu: str, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    monkeypatch.setenv("CTXPLAT_NVME_DIR", "/nvme0")
    dram = {"h100": "200", "h200": "400"}[gpu]

    def plan(tier: str) -> LaunchPlan:
        profile = find_profile(f"vllm-{gpu}-{tier}")
        assert profile.launcher == "vllm" and profile.model == "tiny:llama-3.1-8b"
        return build_launch(profile, python="PY", model="/m", port=1, workdir=WORKDIR)

    for tier in ("hbm", "cpu-offload", "lmcache-dram", "lmcache-disk"):
        p = plan(tier)
        assert _flag(p.argv, "--gpu-memory-utilization") == "0.9"
        assert _flag(p.argv, "--max-model-len") == "131072"
        assert _flag(p.argv, "--load-format") == "dummy"
        assert _flag(p.argv, "--served-model-name") == "llama-3.1-8b-dummy"
        assert "--enable-prefix-caching" in p.argv and "--enforce-eager" not in p.argv
        assert "VLLM_CPU_KVCACHE_SPACE" not in p.env
    hbm = plan("hbm")
    assert "--kv-transfer-config" not in hbm.argv and "--kv-offloading-size" not in hbm.argv
    off = plan("cpu-offload")
    assert _flag(off.argv, "--kv-offloading-size") == dram
    assert _flag(off.argv, "--kv-offloading-backend") == "native"
    lm = plan("lmcache-dram")
    assert json.loads(_flag(lm.argv, "--kv-transfer-config"))["kv_connector"] == \
        "LMCacheConnectorV1"
    assert lm.env["LMCACHE_LOCAL_CPU"] == "True"
    assert lm.env["LMCACHE_MAX_LOCAL_CPU_SIZE"] == dram
    assert lm.env["LMCACHE_CHUNK_SIZE"] == "256"
    assert "LMCACHE_LOCAL_DISK" not in lm.env
    disk = plan("lmcache-disk")
    assert disk.env["LMCACHE_LOCAL_DISK"] == "file:///nvme0/ctxplat-lmcache/"
    assert disk.env["LMCACHE_MAX_LOCAL_DISK_SIZE"] == {"h100": "1000", "h200": "2000"}[gpu]
    monkeypatch.delenv("CTXPLAT_NVME_DIR")
    assert plan("lmcache-disk").env["LMCACHE_LOCAL_DISK"] == "file:///mnt/nvme/ctxplat-lmcache/"


def test_every_kv_setting_reaches_the_command_line(tmp_path: Path) -> None:
    p = _plan("launcher: vllm\nmodel: org/model\nengine:\n  tensor_parallel_size: 2\n"
              "  block_size: 32\n  max_num_seqs: 64\n  max_num_batched_tokens: 4096\n"
              "  enforce_eager: true\n  prompt_tokens_details: false\n"
              "kv:\n  prefix_caching: false\n  kvbm:\n    cpu_cache_gb: 100\n"
              "    disk_cache_gb: 500\nenv:\n  HF_TOKEN_FILE: /secret\n"
              "extra_args: ['--seed', '7']\n", tmp_path)
    assert "--no-enable-prefix-caching" in p.argv
    assert "--enable-prompt-tokens-details" not in p.argv
    assert _flag(p.argv, "--tensor-parallel-size") == "2"
    assert _flag(p.argv, "--block-size") == "32"
    assert _flag(p.argv, "--max-num-seqs") == "64"
    assert _flag(p.argv, "--max-num-batched-tokens") == "4096"
    assert "--load-format" not in p.argv  # a hub model loads its real weights by default
    explicit = _plan("launcher: vllm\nmodel: org/model\nengine:\n  load_format: safetensors\n",
                     tmp_path)
    assert _flag(explicit.argv, "--load-format") == "safetensors"  # a set one is passed on
    assert "HF_HUB_OFFLINE" not in p.env
    assert p.argv[-2:] == ["--seed", "7"]
    assert p.env["DYN_KVBM_CPU_CACHE_GB"] == "100" and p.env["DYN_KVBM_DISK_CACHE_GB"] == "500"
    assert json.loads(_flag(p.argv, "--kv-transfer-config")) == {
        "kv_connector": "DynamoConnector", "kv_role": "kv_both",
        "kv_connector_module_path": "kvbm.vllm_integration.connector"}
    assert p.env["HF_TOKEN_FILE"] == "/secret"
    raw = _plan("launcher: vllm\nmodel: m\nkv:\n  transfer_config:\n    kv_connector: "
                "OffloadingConnector\n    kv_role: kv_both\n", tmp_path)
    assert json.loads(_flag(raw.argv, "--kv-transfer-config"))["kv_connector"] == \
        "OffloadingConnector"
    lm_offload = _plan("launcher: vllm\nmodel: m\nkv:\n  offload:\n    size_gib: 64\n"
                       "    backend: lmcache\n  lmcache:\n    cpu_size_gib: 64\n", tmp_path)
    assert _flag(lm_offload.argv, "--kv-offloading-backend") == "lmcache"
    assert "--kv-transfer-config" not in lm_offload.argv
    assert lm_offload.env["LMCACHE_MAX_LOCAL_CPU_SIZE"] == "64"


def test_missing_vllm_python_says_how_to_install(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTXPLAT_VLLM_PYTHON", str(tmp_path / "nope" / "python"))
    with pytest.raises(ServerStartError, match="does not exist"):
        find_vllm_python(find_profile("vllm-cpu"), tmp_path)


# -- process lifetime -----------------------------------------------------------------

def _tagged(tag: str) -> list[int]:
    return processes_with_env("CTXPLAT_TEST_TAG", tag)


def test_watchdog_stops_the_server_group_when_its_parent_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves no chance for atexit: the watchdog still stops the server."""
    tag = uuid.uuid4().hex
    code = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from pytest_ctxplat.servers.process import ManagedProcess\n"
        "argv = [sys.executable, '-m', 'pytest_ctxplat.servers.watchdog', str(os.getpid()),"
        " '--', 'sh', '-c', 'sleep 60 & sleep 60']\n"
        f"ManagedProcess(argv, Path({str(tmp_path / 'log')!r}))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              env={**os.environ, "CTXPLAT_TEST_TAG": tag})
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == b"started"
        deadline = time.monotonic() + 10
        while len(_tagged(tag)) < 5 and time.monotonic() < deadline:  # parent, watchdog,
            time.sleep(0.05)                                         # sh, 2 x sleep
        assert len(_tagged(tag)) >= 5
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        deadline = time.monotonic() + 15
        while _tagged(tag) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _tagged(tag) == []
        assert "parent" in (tmp_path / "log").read_text()
    finally:
        for pid in _tagged(tag):
            os.kill(pid, signal.SIGKILL)
        if parent.stdout is not None:
            parent.stdout.close()
        parent.wait(5)


# -- attach, probe, secrets ------------------------------------------------------------

ATTACH_TEST = """
import pytest

@pytest.mark.slo(cache_hit_rate_min=0.5, error_rate_max=0)
@pytest.mark.workload("chat", users=1, turns=2, think_time_s=0, start_spread_s=0,
                      system_prompt_tokens=64, user_tokens=16, output_tokens=4, block_size=16)
def test_attached(ctxplat_run):
    ctxplat_run()
"""


def test_attach_with_key_degrades_and_never_writes_the_key(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "sk-ctxplat-" + uuid.uuid4().hex
    monkeypatch.setenv("CTXPLAT_TEST_KEY", key)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(ATTACH_TEST)
    with LimitedServer(key) as server:
        # (a subprocess: an in-process run would unload modules its imports loaded)
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider",
                                               f"--ctxplat-url={server.url}/v1",
                                               "--ctxplat-api-key-env=CTXPLAT_TEST_KEY",
                                               "--ctxplat-results=res",
                                               "--junitxml=junit.xml", "-rA")
        assert server.unauthorized == 0  # the key went with every request
        assert "chat" in server.requests
    result.assert_outcomes(failed=1)
    # The SLO on the unmeasurable per-request hit rate fails with the probe's reason.
    result.stdout.fnmatch_lines(["*cache_hit_rate_min*FAIL: probe: the server does not "
                                 "report usage.prompt_tokens_details.cached_tokens*"])
    data = json.loads(next((pytester.path / "res").glob("*.json")).read_text())
    caps = data["target"]["capabilities"]
    assert caps["token_id_prompts"] is False and caps["chat"] is True
    assert caps["cached_tokens"] is False and caps["metrics"] is False
    assert data["workload"]["api"] == "chat"
    assert data["metrics"]["errors"] == 0 and data["metrics"]["requests"] == 2
    notes = data["hit_rates"]["notes"]
    assert "token-id" in notes["prompts"] and "/metrics" in notes["hit_rate.server"]
    assert data["target"]["settings"] == {"api_key_env": "CTXPLAT_TEST_KEY"}
    files = [p for p in pytester.path.rglob("*") if p.is_file()]
    assert any(p.name == "junit.xml" for p in files)
    for path in files:
        assert key not in path.read_text(errors="replace"), path
    assert key not in result.stdout.str() and key not in result.stderr.str()


def test_probe_of_the_simulator_sees_everything() -> None:
    import httpx

    from pytest_ctxplat.api import run_sync
    from pytest_ctxplat.servers.attach import AttachedServer
    from pytest_ctxplat.servers.probe import probe_capabilities
    from pytest_ctxplat.servers.sim import start_sim

    sim = start_sim({"speedup": 20})
    try:
        async def probe() -> object:
            async with httpx.AsyncClient() as client:
                return await probe_capabilities(client, AttachedServer(sim.url).url,
                                                "ctxplat-sim")

        caps = run_sync(probe())
    finally:
        sim.close()
    assert caps.to_dict() == {"token_id_prompts": True, "chat": None, "stream_usage": True,
                              "cached_tokens": True, "metrics": True,
                              "prefix_cache_metrics": True, "reachable": True,
                              "problems": {}}


# -- several profiles in one session ----------------------------------------------------

MULTI_TEST = """
import pytest

WL = dict(users=2, turns=3, think_time_s=0.2, start_spread_s=0.5, system_prompt_tokens=512,
          user_tokens=64, output_tokens=8, block_size=16)

@pytest.mark.slo(error_rate_max=0)
@pytest.mark.workload("chat", **WL)
def test_each(ctxplat_run, ctxplat_server):
    r = ctxplat_run()
    assert r.target["profile"] == ctxplat_server.info.profile

@pytest.mark.servers("tiny-cache")
@pytest.mark.workload("chat", **WL)
def test_marked(ctxplat_run):
    assert ctxplat_run().target["settings"]["kv_capacity_tokens"] == 1024
"""


def test_tests_run_across_profiles_with_a_comparison(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n"
                     "ctxplat_profile_dirs = more\n")
    (pytester.path / "more").mkdir()
    (pytester.path / "more" / "tiny-cache.yaml").write_text(
        "launcher: sim\ndescription: a 1024-token cache\nsim:\n  kv_capacity_tokens: 1024\n")
    pytester.makepyfile(MULTI_TEST)
    result = pytester.runpytest_subprocess(*FAST, "--ctxplat-server=sim,tiny-cache",
                                           "--ctxplat-results=res", "-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*test_each?sim? PASSED*", "*test_each?tiny-cache? PASSED*",
                                 "*test_marked?tiny-cache? PASSED*"])
    result.stdout.fnmatch_lines(["*ctxplat profile comparison*", "*test_each*sim*1.00x*",
                                 "*tiny-cache*x*"])
    # two servers for three tests: tiny-cache is started once and shared
    logs = sorted(p.name for p in (pytester.path / "res" / "logs").iterdir())
    assert logs == ["server-sim.log", "server-tiny-cache.log"]


def test_broken_profile_is_a_usage_error_before_any_server(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    (pytester.path / "fixtures" / "servers").mkdir(parents=True)
    (pytester.path / "fixtures" / "servers" / "bad.yaml").write_text(
        "launcher: vllm\nmodel: tiny\nengine:\n  dtyp: bfloat16\n")
    pytester.makepyfile("def test_x(ctxplat_run):\n    ctxplat_run()\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--ctxplat-server=bad")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*bad.yaml:4: engine.dtyp: unknown key*"])
    marker = pytester.makepyfile(
        test_m="import pytest\n@pytest.mark.servers('nope')\n"
               "def test_x(ctxplat_run):\n    ctxplat_run()\n")
    result = pytester.runpytest("-p", "no:cacheprovider", str(marker))
    # a one-line usage error, like the other markers', not a traceback
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *test_m.py::test_x: unknown server 'nope'*"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_comparison_table_groups_by_test() -> None:
    rows = [
        {"nodeid": "t.py::test_a[sim]", "profile": "sim", "ttft_p95_ms": 100.0,
         "hit_rate_request": 0.5, "slo_passed": True},
        {"nodeid": "t.py::test_a[vllm-cpu]", "profile": "vllm-cpu", "ttft_p95_ms": 250.0,
         "hit_rate_request": 0.6, "hit_rate_external": 0.25, "slo_passed": False},
    ]
    lines = profile_comparison(rows).splitlines()
    assert lines[2].startswith("t.py::test_a ") and "sim" in lines[2] and "1.00x" in lines[2]
    assert lines[3].split()[0] == "vllm-cpu" and "2.50x" in lines[3] and "25.0%" in lines[3]
    assert "FAIL" in lines[3] and "pass" in lines[2]


def test_profile_mapping_round_trip() -> None:
    item = find_yaml(SERVERS, "vllm-cpu-disk")
    assert item is not None
    profile = parse_profile(yaml.safe_load(item.read_text()), name="x")
    assert profile.kv.disk_store is not None and profile.kv.disk_store.path is None
    assert profile.describe()["launcher"] == "vllm-cpu"


def test_a_dead_servers_log_tail_ends_with_how_it_exited(tmp_path: Path) -> None:
    # A killed vLLM's engine process prints a long traceback after the watchdog has
    # logged the exit; the failure report shows only the last lines of the tail, and
    # the exit code must be among them.
    from pytest_ctxplat.servers.process import ManagedProcess

    script = ("import sys\n"
              "print('INFO serving', flush=True)\n"
              "print('ctxplat watchdog: server exited with code -9', file=sys.stderr,"
              " flush=True)\n"
              "for i in range(60): print(f'(EngineCore) ERROR traceback line {i}', flush=True)\n")
    proc = ManagedProcess([sys.executable, "-c", script], tmp_path / "server.log")
    proc.proc.wait(timeout=30)
    tail = proc.log_tail(40).splitlines()
    assert len(tail) == 40
    assert tail[-1] == "ctxplat watchdog: server exited with code -9"
    assert tail[-2] == "(EngineCore) ERROR traceback line 59"
    assert "INFO serving" not in tail
    proc.stop()
