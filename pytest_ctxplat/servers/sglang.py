"""SGLang servers from a profile (``launcher: sglang``), with HiCache KV tiers.

:func:`build_sglang_launch` turns a profile into ``python -m sglang.launch_server``
flags: the engine settings (``tensor_parallel_size`` -> ``--tp-size``,
``max_model_len`` -> ``--context-length``, ``gpu_memory_utilization`` ->
``--mem-fraction-static``, ``max_num_seqs`` -> ``--max-running-requests``,
``max_num_batched_tokens`` -> ``--chunked-prefill-size``, ``block_size`` ->
``--page-size``), ``kv.prefix_caching: false`` -> ``--disable-radix-cache``, and
``hicache:`` (GPU, host and storage tiers) -> ``--enable-hierarchical-cache`` and the
``--hicache-*`` flags. ``--enable-metrics`` is always on, so the tier counters
(``sglang:cached_tokens_total{cache_source=...}``) can be read. SGLang needs a GPU.
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path

from ..errors import ServerStartError
from .base import ServerInfo
from .process import make_temp_dir
from .profiles import ServerProfile
from .vllm import LaunchPlan, VllmServer, free_port

__all__ = ["ENTRYPOINT", "SglangServer", "build_sglang_launch", "start_sglang"]

ENTRYPOINT = "sglang.launch_server"


def build_sglang_launch(profile: ServerProfile, *, python: str, port: int) -> LaunchPlan:
    """The command line of one SGLang server for ``profile`` on ``port``."""
    e = profile.engine
    argv = [python, "-m", ENTRYPOINT, "--model-path", str(profile.model),
            "--host", "127.0.0.1", "--port", str(port), "--enable-metrics",
            "--tp-size", str(e.tensor_parallel_size)]
    if profile.served_model_name:
        argv += ["--served-model-name", profile.served_model_name]
    for value, flag in ((e.dtype if e.dtype != "auto" else None, "--dtype"),
                        (e.load_format if e.load_format != "auto" else None, "--load-format"),
                        (e.max_model_len, "--context-length"),
                        (e.gpu_memory_utilization, "--mem-fraction-static"),
                        (e.max_num_seqs, "--max-running-requests"),
                        (e.max_num_batched_tokens, "--chunked-prefill-size"),
                        (e.block_size, "--page-size")):
        if value is not None:
            argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if not profile.kv.prefix_caching:
        argv.append("--disable-radix-cache")
    h = profile.hicache
    if h is not None:
        argv += ["--enable-hierarchical-cache", "--hicache-write-policy", h.write_policy]
        if h.size_gb is not None:
            argv += ["--hicache-size", f"{h.size_gb:g}"]
        else:
            argv += ["--hicache-ratio", f"{h.ratio:g}"]
        if h.io_backend:
            argv += ["--hicache-io-backend", h.io_backend]
        if h.mem_layout:
            argv += ["--hicache-mem-layout", h.mem_layout]
        if h.storage_backend:
            argv += ["--hicache-storage-backend", h.storage_backend]
    argv += list(profile.extra_args)
    env = {k: str(v) for k, v in profile.env.items()}
    if h is not None and h.storage_dir:
        env["SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR"] = h.storage_dir
    return LaunchPlan(argv, env)


def find_sglang_python(profile: ServerProfile) -> str:
    """The profile's ``python``, else this interpreter when it can import sglang."""
    if profile.python:
        return str(Path(profile.python).expanduser())
    if importlib.util.find_spec("sglang") is not None:
        return sys.executable
    raise ServerStartError(f"profile {profile.name!r} needs SGLang (and a GPU): install "
                           "sglang, or set python: in the profile")


class SglangServer(VllmServer):
    """An SGLang server started from a profile; process handling as for vLLM."""

    def __init__(self, profile: ServerProfile, *, log_dir: Path,
                 ready_timeout_s: float | None = None) -> None:
        self.profile = profile
        self.log_dir = Path(log_dir)
        self.python = find_sglang_python(profile)
        self.model_path = str(profile.model)
        self.workdir = make_temp_dir("ctxplat-sglang-")
        self.server_id = uuid.uuid4().hex
        self.port = free_port()
        self.ready_timeout_s = float(ready_timeout_s or profile.ready_timeout_s or 900.0)
        self.plan = build_sglang_launch(profile, python=self.python, port=self.port)
        self.proc = None
        self.starts = 0
        self._url = f"http://127.0.0.1:{self.port}"
        self.served_model = None
        self.capabilities = None
        self.reset_cache = profile.reset_cache
        settings = profile.describe()
        settings["argv"] = self.plan.argv[1:]
        self.info = ServerInfo(launcher=profile.launcher, url=self._url, profile=profile.name,
                               model=None, settings=settings)


def start_sglang(profile: ServerProfile, *, log_dir: Path,
                 ready_timeout_s: float | None = None) -> SglangServer:
    """Start ``profile`` and wait until it is ready."""
    server = SglangServer(profile, log_dir=log_dir, ready_timeout_s=ready_timeout_s)
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    return server
