"""Server profiles: named recipes (``fixtures/servers/*.yaml``) that start a server.

A profile names a launcher (``sim``, ``vllm``, ``vllm-cpu``, ``url``, or one a plugin
registers), a model and the KV-tier settings. It is read through the one config layer
(:mod:`pytest_ctxplat.config`): an unknown key, a wrong type or a conflicting tier
setting raises :class:`~pytest_ctxplat.errors.ConfigError` naming the file, the line and
the key.

Lookup order for ``--ctxplat-server NAME``: the given directories (the rootdir's
``fixtures/servers/``, then the ``ctxplat_profile_dirs`` ini directories), then the
profiles shipped in the package. ``sim`` and ``url`` work without any file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from .. import builtin
from ..config import FieldError, Source, Validated, build, parse_yaml, read_yaml, setting
from ..errors import ConfigError

__all__ = ["BUILTIN_LAUNCHERS", "DiskStoreSettings", "EngineSettings", "HicacheSettings",
           "KvSettings",
           "KvbmSettings", "LmcacheSettings", "OffloadSettings", "ServerProfile",
           "available_profiles", "find_profile", "load_profile", "parse_profile"]

BUILTIN_LAUNCHERS = ("sim", "vllm", "vllm-cpu", "url", "sglang")
_VLLM = ("vllm", "vllm-cpu")
HICACHE_WRITE_POLICIES = ("write_through", "write_back", "write_through_selective")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EngineSettings(Validated):
    """vLLM engine flags (``engine:``)."""

    dtype: str = setting("auto", doc="--dtype (vllm-cpu default: bfloat16)")
    load_format: str = setting("auto", doc="--load-format; 'dummy' for random weights "
                               "(default for tiny models)")
    max_model_len: int | None = setting(None, gt=0, doc="--max-model-len")
    gpu_memory_utilization: float | None = setting(None, gt=0, le=1, doc="--gpu-memory-"
                                                   "utilization (fraction of HBM)")
    tensor_parallel_size: int = setting(1, ge=1, doc="--tensor-parallel-size")
    enforce_eager: bool = setting(False, doc="--enforce-eager")
    max_num_seqs: int | None = setting(None, gt=0, doc="--max-num-seqs")
    max_num_batched_tokens: int | None = setting(None, gt=0, doc="--max-num-batched-tokens")
    block_size: int | None = setting(None, gt=0, doc="--block-size (KV block size)")
    prompt_tokens_details: bool = setting(True, doc="--enable-prompt-tokens-details")
    cpu_kvcache_space_gib: float = setting(1.0, gt=0, doc="vllm-cpu: VLLM_CPU_KVCACHE_SPACE")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OffloadSettings(Validated):
    """vLLM's built-in KV offloading to CPU memory (CUDA / XPU only)."""

    size_gib: float = setting(gt=0, doc="--kv-offloading-size (GiB of host memory)")
    backend: str = setting("native", choices=("native", "lmcache"),
                           doc="--kv-offloading-backend")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LmcacheSettings(Validated):
    """The LMCache connector (LMCacheConnectorV1) with DRAM and an optional disk tier."""

    cpu: bool = setting(True, doc="LMCACHE_LOCAL_CPU")
    cpu_size_gib: float = setting(5.0, ge=0, doc="LMCACHE_MAX_LOCAL_CPU_SIZE (GB)")
    disk_path: str | None = setting(None, doc="LMCACHE_LOCAL_DISK (null: no disk tier)")
    disk_size_gib: float | None = setting(None, gt=0, doc="LMCACHE_MAX_LOCAL_DISK_SIZE (GB)")
    chunk_size: int = setting(256, gt=0, doc="LMCACHE_CHUNK_SIZE (tokens)")

    def validate(self) -> None:
        if self.disk_size_gib is not None and self.disk_path is None:
            raise FieldError("disk_size_gib", "set kv.lmcache.disk_path as well")


@dataclasses.dataclass(frozen=True, kw_only=True)
class KvbmSettings(Validated):
    """The Dynamo KV block manager (DynamoConnector)."""

    cpu_cache_gb: float | None = setting(None, ge=0, doc="DYN_KVBM_CPU_CACHE_GB")
    disk_cache_gb: float | None = setting(None, ge=0, doc="DYN_KVBM_DISK_CACHE_GB")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiskStoreSettings(Validated):
    """vLLM's ExampleConnector: KV blocks stored as files (works on CPU)."""

    path: str | None = setting(None, doc="shared_storage_path (null: a temporary folder "
                               "kept for the session, across restarts)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class HicacheSettings(Validated):
    """SGLang HiCache (``hicache:``, ``launcher: sglang``): GPU, host and storage tiers."""

    ratio: float = setting(2.0, gt=1, doc="--hicache-ratio (host pool / GPU pool)")
    size_gb: float | None = setting(None, gt=0, doc="--hicache-size (GB of host memory; "
                                    "overrides ratio)")
    write_policy: str = setting("write_through", choices=HICACHE_WRITE_POLICIES,
                                doc="--hicache-write-policy")
    io_backend: str | None = setting(None, doc="--hicache-io-backend (kernel, direct)")
    mem_layout: str | None = setting(None, doc="--hicache-mem-layout (layer_first, "
                                     "page_first, page_first_direct)")
    storage_backend: str | None = setting(None, doc="--hicache-storage-backend (file, "
                                          "mooncake, hf3fs, nixl; null: no storage tier)")
    storage_dir: str | None = setting(None, doc="file backend: SGLANG_HICACHE_FILE_BACKEND_"
                                      "STORAGE_DIR")


_CONNECTORS = ("lmcache", "kvbm", "disk_store", "transfer_config")


@dataclasses.dataclass(frozen=True, kw_only=True)
class KvSettings(Validated):
    """KV-cache tiers (``kv:``): at most one connector; ``offload`` may be combined with
    ``lmcache`` when its backend is ``lmcache``."""

    prefix_caching: bool = setting(True, doc="--enable-prefix-caching / --no-enable-...")
    offload: OffloadSettings | None = None
    lmcache: LmcacheSettings | None = None
    kvbm: KvbmSettings | None = None
    disk_store: DiskStoreSettings | None = None
    transfer_config: dict[str, Any] | None = setting(None, doc="a raw --kv-transfer-config")

    @property
    def connectors(self) -> list[str]:
        return [c for c in _CONNECTORS if getattr(self, c) is not None]

    def validate(self) -> None:
        used = self.connectors
        if len(used) > 1:
            raise FieldError(used[1], f"only one KV connector per profile; also set: "
                                      f"kv.{used[0]} (use transfer_config for a "
                                      "MultiConnector)")
        if self.offload is not None and used and \
                not (used == ["lmcache"] and self.offload.backend == "lmcache"):
            raise FieldError("offload", f"cannot be combined with kv.{used[0]}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerProfile(Validated):
    """A validated server profile (see docs/reference/servers.md for every key)."""

    name: str = setting("", doc="profile name (default: the file name without .yaml)")
    description: str = setting("", doc="free text shown in results")
    launcher: str = setting(non_empty=True, doc="sim | vllm | vllm-cpu | sglang | url, or a "
                            "plugin's launcher")
    model: str | None = setting(None, doc="vLLM: 'tiny', 'tiny:llama-3.1-8b', a local "
                                "folder or a hub id; sim/url: the model name")
    served_model_name: str | None = setting(None, doc="vLLM --served-model-name")
    python: str | None = setting(None, doc="interpreter with vllm installed")
    ready_timeout_s: float | None = setting(None, gt=0, doc="readiness deadline")
    reset_cache: bool | None = setting(None, doc="POST /reset_prefix_cache before each "
                                       "test (default: the --ctxplat-reset-cache option)")
    env: dict[str, str | int | float] = setting(default_factory=dict, doc="extra "
                                                "environment variables of the server")
    extra_args: tuple[str, ...] = setting((), doc="extra command-line arguments")
    sim: dict[str, Any] = setting(default_factory=dict, doc="simulator settings "
                                  "(SimConfig keys)")
    url: str | None = setting(None, doc="url launcher: base URL of the running server")
    api_key_env: str | None = setting(None, doc="url launcher: environment variable "
                                      "holding the API key")
    metrics_urls: tuple[str, ...] = setting((), doc="more /metrics endpoints (replicas, "
                                            "workers, a KV store); counters are summed")
    engine: EngineSettings = dataclasses.field(default_factory=EngineSettings)
    hicache: HicacheSettings | None = None
    kv: KvSettings = dataclasses.field(default_factory=KvSettings)
    options: dict[str, Any] = setting(default_factory=dict, doc="settings of a plugin's "
                                      "launcher")
    source: str = setting("<mapping>", internal=True)

    def validate(self) -> None:
        if self.launcher == "url" and not self.url:
            raise FieldError("url", "the url launcher needs url: http://HOST:PORT")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise FieldError("url", f"must start with http:// or https://, got {self.url!r}")
        for i, u in enumerate(self.metrics_urls):
            if not u.startswith(("http://", "https://")):
                raise FieldError(f"metrics_urls.{i}", f"must start with http:// or "
                                                      f"https://, got {u!r}")
        if self.hicache is not None and self.launcher != "sglang":
            raise FieldError("hicache", "SGLang HiCache needs launcher: sglang")
        if self.launcher == "sglang" and self.kv.connectors:
            raise FieldError(f"kv.{self.kv.connectors[0]}", "a vLLM KV connector; SGLang "
                                                             "uses hicache:")
        if self.launcher == "sglang" and not self.model:
            raise FieldError("model", "SGLang profiles need a model: a folder or a hub id")
        if self.launcher in _VLLM and not self.model:
            raise FieldError("model", "vLLM profiles need a model: 'tiny', a folder or a "
                                      "hub id")
        if self.launcher == "vllm-cpu" and self.kv.offload is not None:
            raise FieldError("kv.offload", "vLLM's native CPU offload only runs on CUDA / "
                                           "XPU GPUs; on vllm-cpu use kv.disk_store")

    def describe(self) -> dict[str, Any]:
        """Settings as written into results (no secrets: only env variable names)."""
        data = dataclasses.asdict(self)
        out = {k: v for k, v in data.items() if v not in (None, {}, [], (), "")}
        if "env" in out:
            out["env"] = sorted(out["env"])
        return out


def parse_profile(data: Any, *, source: Source | str = "<mapping>", name: str | None = None,
                  launchers: Collection[str] = BUILTIN_LAUNCHERS) -> ServerProfile:
    """Validate a profile mapping read from ``source``; ``launchers`` are the launcher
    kinds available (the built-ins plus those plugins register)."""
    src = source if isinstance(source, Source) else Source(source)
    profile = build(ServerProfile, {} if data is None else data, src)
    if profile.launcher not in launchers:
        raise src.error("launcher", f"unknown launcher {profile.launcher!r}",
                        ", ".join(launchers))
    if profile.launcher == "sim" and profile.sim:
        from ..sim.config import SimConfig

        build(SimConfig, profile.sim, src, "sim")
    return dataclasses.replace(profile, name=profile.name or name or "profile",
                               source=src.name)


def load_profile(path: Path, launchers: Collection[str] = BUILTIN_LAUNCHERS
                 ) -> ServerProfile:
    """Read and validate one profile file."""
    data, src = read_yaml(path)
    return parse_profile(data, source=src, name=Path(path).stem, launchers=launchers)


def available_profiles(dirs: Sequence[Path] = ()) -> list[str]:
    """``sim``, ``url``, then every profile name found in ``dirs`` and the built-ins."""
    names: set[str] = set(builtin.yaml_names(builtin.SERVERS))
    for d in dirs:
        if Path(d).is_dir():
            names.update(p.stem for p in Path(d).glob("*.y*ml"))
    return ["sim", "url", *sorted(names - {"sim", "url"})]


def find_profile(name: str, dirs: Sequence[Path] = (),
                 launchers: Collection[str] = BUILTIN_LAUNCHERS) -> ServerProfile:
    """Resolve ``name`` (a profile name or a path to a ``.yaml`` file) in ``dirs`` then
    the built-in profiles; ``sim`` falls back to the default simulator."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml"):
        return load_profile(candidate, launchers)
    for d in dirs:
        for suffix in (".yaml", ".yml"):
            path = Path(d) / f"{name}{suffix}"
            if path.is_file():
                return load_profile(path, launchers)
    item = builtin.find_yaml(builtin.SERVERS, name)
    if item is not None:
        data, src = parse_yaml(item.read_text(encoding="utf-8"), f"<built-in>/{item.name}")
        return parse_profile(data, source=src, name=name, launchers=launchers)
    if name == "sim":
        return parse_profile({"launcher": "sim"}, name="sim", source="<built-in>")
    where = ", ".join([*(str(d) for d in dirs), "the built-in profiles"])
    raise ConfigError(f"unknown server {name!r}; valid: {', '.join(available_profiles(dirs))}"
                      f" (server profiles are looked up in {where})")
