"""The Kubernetes how-to's manifests: valid against the Kubernetes schemas, and their
commands, run locally with the environment an Indexed Job gives each pod, shard a run
and merge it into one verdict."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from pytest_ctxplat.sim.config import SimConfig
from pytest_ctxplat.sim.server import serve_in_thread

kubernetes_validate = pytest.importorskip("kubernetes_validate")

K8S = Path(__file__).parents[1] / "docs" / "how-to" / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))
# the manifest's load, scaled down for one small machine
FULL_LOAD = "--set users=256 --set turns=8 --set think_time_s=5"
SMALL_LOAD = ("--set users=8 --set turns=4 --set think_time_s=0.5 --set start_spread_s=1 "
              "--set system_prompt_tokens=256 --set user_tokens=64 --set output_tokens=16 "
              "--set block_size=16")


def _manifest(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((K8S / name).read_text())
    return doc


def test_the_how_to_ships_its_manifests() -> None:
    assert {p.name for p in MANIFESTS} == {"shards-job.yaml", "merge-job.yaml",
                                           "results-pvc.yaml"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_the_shards_job_is_indexed_and_names_its_shard_count() -> None:
    job = _manifest("shards-job.yaml")["spec"]
    env = {e["name"]: e["value"] for e in job["template"]["spec"]["containers"][0]["env"]}
    assert job["completionMode"] == "Indexed"
    assert int(env["CTXPLAT_SHARDS"]) == job["completions"] == job["parallelism"]


def _container(name: str) -> tuple[list[str], dict[str, str]]:
    container = _manifest(name)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container.get("env", ())}
    return [*container["command"], *container["args"]], env


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with serve_in_thread(SimConfig(profile="h100-llama8b", speedup=20.0)) as sim:
        yield sim.url


def _pod_env(manifest_env: dict[str, str], **extra: str) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # where the ctxplat command is
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            **manifest_env, **extra}


def test_shard_pods_then_the_merge_pod_give_one_verdict(sim_url: str, tmp_path: Path) -> None:
    shard_cmd, shard_env = _container("shards-job.yaml")
    merge_cmd, merge_env = _container("merge-job.yaml")
    assert FULL_LOAD in shard_cmd[-1]
    local = [part.replace(FULL_LOAD, SMALL_LOAD).replace("/results", str(tmp_path))
             for part in shard_cmd]
    shards = 2  # the manifest's 4 shards, as 2 on this machine
    start = f"{time.time() + 8.0:.3f}"
    procs = [subprocess.Popen(local, env=_pod_env(
        shard_env, JOB_COMPLETION_INDEX=str(i), CTXPLAT_SHARDS=str(shards),
        CTXPLAT_START_AT=start, CTXPLAT_URL=sim_url), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT) for i in range(shards)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()
    run_dir = tmp_path / shard_env["RUN_ID"]
    assert sorted(f.name for f in run_dir.iterdir()) == [
        "chat-swarm.shard-0.json", "chat-swarm.shard-1.json"]
    merge = [part.replace("/results", str(tmp_path)) for part in merge_cmd]
    done = subprocess.run(merge, env=_pod_env(merge_env), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    merged = orjson.loads((run_dir / "merged" / "chat-swarm.json").read_bytes())
    assert merged["metrics"]["requests"] == 32
    assert merged["verdict"]["passed"] and merged["parts"]["count"] == shards
