"""Server profiles: named recipes (``fixtures/servers/*.yaml``) that start a server.

A profile names a launcher (``sim``, ``vllm``, ``vllm-cpu`` or ``url``), a model and the
KV-tier settings. Every key is checked against :data:`SCHEMA` when the profile is read:
an unknown key, a wrong type or a conflicting tier setting raises
:class:`~pytest_ctxplat.errors.ConfigError` naming the file, the line and the key.

Lookup order for ``--ctxplat-server NAME``: the rootdir's ``fixtures/servers/``, the
``ctxplat_profile_dirs`` ini directories, then the profiles bundled with the project.
``sim`` and ``url`` work without any file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

__all__ = ["LAUNCHERS", "SCHEMA", "ServerProfile", "available_profiles", "bundled_dir",
           "find_profile", "load_profile", "parse_profile"]

LAUNCHERS = ("sim", "vllm", "vllm-cpu", "url")

# key -> (type, default, help). A dict type is a nested group with its own keys.
_Num = (int, float)
SCHEMA: dict[str, Any] = {
    "name": (str, None, "profile name (default: the file name without .yaml)"),
    "description": (str, "", "free text shown in results"),
    "launcher": (str, None, "sim | vllm | vllm-cpu | url (required)"),
    "model": (str, None, "vLLM: 'tiny', 'tiny:llama-3.1-8b' (config made locally by "
              "make-tiny-model), a local folder or a hub id; sim/url: the model name"),
    "served_model_name": (str, None, "vLLM --served-model-name (the name clients send)"),
    "python": (str, None, "interpreter with vllm installed (default: $CTXPLAT_VLLM_PYTHON, "
               "then .venv-vllm/bin/python in the rootdir or the project)"),
    "ready_timeout_s": (_Num, None, "readiness deadline (default: 300 s vllm-cpu, 900 s "
                        "vllm, 30 s sim)"),
    "reset_cache": (bool, None, "POST /reset_prefix_cache before each test (default: the "
                    "--ctxplat-reset-cache option)"),
    "env": (dict, {}, "extra environment variables for the server process"),
    "extra_args": (list, [], "extra command-line arguments appended verbatim"),
    "sim": (dict, {}, "simulator settings (SimConfig keys, see reference/simulator.md)"),
    "url": (str, None, "url launcher: base URL of the running server"),
    "api_key_env": (str, None, "url launcher: environment variable holding the API key"),
    "engine": ({
        "dtype": (str, "auto", "--dtype (vllm-cpu default: bfloat16)"),
        "load_format": (str, "auto", "--load-format; 'dummy' for random weights (default "
                        "for tiny models)"),
        "max_model_len": (int, None, "--max-model-len"),
        "gpu_memory_utilization": (_Num, None, "--gpu-memory-utilization (fraction of HBM)"),
        "tensor_parallel_size": (int, 1, "--tensor-parallel-size"),
        "enforce_eager": (bool, False, "--enforce-eager (no CUDA graphs / compilation)"),
        "max_num_seqs": (int, None, "--max-num-seqs"),
        "max_num_batched_tokens": (int, None, "--max-num-batched-tokens"),
        "block_size": (int, None, "--block-size (KV block size in tokens)"),
        "prompt_tokens_details": (bool, True, "--enable-prompt-tokens-details (per-request "
                                  "cached_tokens)"),
        "cpu_kvcache_space_gib": (_Num, 1, "vllm-cpu: VLLM_CPU_KVCACHE_SPACE (GiB of KV "
                                  "cache in RAM)"),
    }, {}, "engine flags"),
    "kv": ({
        "prefix_caching": (bool, True, "--enable-prefix-caching / --no-enable-prefix-caching"),
        "offload": ({
            "size_gib": (_Num, None, "--kv-offloading-size (GiB of host memory)"),
            "backend": (str, "native", "--kv-offloading-backend: native | lmcache"),
        }, None, "vLLM's built-in KV offloading to CPU memory (CUDA / XPU only)"),
        "lmcache": ({
            "cpu": (bool, True, "LMCACHE_LOCAL_CPU"),
            "cpu_size_gib": (_Num, 5, "LMCACHE_MAX_LOCAL_CPU_SIZE (GB)"),
            "disk_path": (str, None, "LMCACHE_LOCAL_DISK (a folder; null: no disk tier)"),
            "disk_size_gib": (_Num, None, "LMCACHE_MAX_LOCAL_DISK_SIZE (GB)"),
            "chunk_size": (int, 256, "LMCACHE_CHUNK_SIZE (tokens)"),
        }, None, "LMCache connector (LMCacheConnectorV1) with DRAM and optional disk"),
        "kvbm": ({
            "cpu_cache_gb": (_Num, None, "DYN_KVBM_CPU_CACHE_GB"),
            "disk_cache_gb": (_Num, None, "DYN_KVBM_DISK_CACHE_GB"),
        }, None, "Dynamo KV block manager (DynamoConnector)"),
        "disk_store": ({
            "path": (str, None, "shared_storage_path (null: a temporary folder kept for "
                     "the session, across restarts)"),
        }, None, "vLLM's ExampleConnector: KV blocks stored as files (works on CPU)"),
        "transfer_config": (dict, None, "a raw --kv-transfer-config mapping (exclusive with "
                            "lmcache, kvbm and disk_store)"),
    }, {}, "KV-cache tiers"),
}
_CONNECTORS = ("lmcache", "kvbm", "disk_store", "transfer_config")


@dataclasses.dataclass(frozen=True)
class ServerProfile:
    """A validated profile: every group filled with its defaults."""

    name: str
    launcher: str
    data: Mapping[str, Any]
    source: str = "<built-in>"

    @property
    def model(self) -> str | None:
        model = self.data.get("model")
        return None if model is None else str(model)

    @property
    def engine(self) -> Mapping[str, Any]:
        return self.data["engine"]  # type: ignore[no-any-return]

    @property
    def kv(self) -> Mapping[str, Any]:
        return self.data["kv"]  # type: ignore[no-any-return]

    def describe(self) -> dict[str, Any]:
        """Settings as written into results (no secrets: only env variable names)."""
        out = {k: v for k, v in self.data.items() if v not in (None, {}, [], "")}
        if "env" in out:
            out["env"] = sorted(out["env"])
        out["source"] = self.source
        return out


class _Lines:
    """Line numbers of every key path in a YAML document (``kv.offload.size_gib``)."""

    def __init__(self, node: yaml.Node | None) -> None:
        self.lines: dict[str, int] = {}
        if node is not None:
            self._walk(node, "")

    def _walk(self, node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                path = f"{prefix}{k.value}"
                self.lines[path] = k.start_mark.line + 1
                self._walk(v, path + ".")

    def at(self, path: str) -> int:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path.rpartition(".")[0]
        return 1


def _type_name(tp: Any) -> str:
    if tp is _Num:
        return "a number"
    return {str: "a string", int: "an integer", bool: "true or false", dict: "a mapping",
            list: "a list"}.get(tp, str(tp))


def _check(value: Any, schema: Mapping[str, Any], path: str, where: str,
           lines: _Lines) -> dict[str, Any]:
    def fail(key_path: str, msg: str) -> ConfigError:
        return ConfigError(f"{where}:{lines.at(key_path)}: {key_path}: {msg}")

    if not isinstance(value, Mapping):
        raise fail(path or "profile", f"must be a mapping, got {value!r}")
    out: dict[str, Any] = {}
    for key, item in value.items():
        key_path = f"{path}{key}"
        if key not in schema:
            raise fail(key_path, f"unknown key; valid keys here: {', '.join(schema)}")
        tp, _default, _help = schema[key]
        if item is None:  # null: the default (filled in below)
            continue
        if isinstance(tp, dict):
            out[key] = _check(item, tp, key_path + ".", where, lines)
            continue
        ok = isinstance(item, tp) and not (tp in (_Num, int) and isinstance(item, bool))
        if not ok:
            raise fail(key_path, f"must be {_type_name(tp)}, got {item!r}")
        if tp in (_Num, int) and item < 0:
            raise fail(key_path, f"must be >= 0, got {item!r}")
        out[key] = item
    for key, (tp, default, _help) in schema.items():
        if key not in out:
            if isinstance(tp, dict):
                out[key] = None if default is None else _check({}, tp, f"{path}{key}.", where,
                                                              lines)
            else:
                out[key] = default.copy() if isinstance(default, (dict, list)) else default
    return out


def parse_profile(data: Any, *, source: str = "<mapping>", name: str | None = None,
                  node: yaml.Node | None = None) -> ServerProfile:
    """Validate a profile mapping. ``source`` and ``node`` (the composed YAML) make error
    messages name the file and line."""
    lines = _Lines(node)
    full = _check(data if data is not None else {}, SCHEMA, "", source, lines)

    def fail(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{source}:{lines.at(key)}: {key}: {msg}")

    launcher = full["launcher"]
    if launcher not in LAUNCHERS:
        raise fail("launcher", f"must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    profile_name = full["name"] or name or "profile"
    full["name"] = profile_name
    if launcher == "url" and not full["url"]:
        raise fail("url", "the url launcher needs url: http://HOST:PORT")
    if full["url"] and not str(full["url"]).startswith(("http://", "https://")):
        raise fail("url", f"must start with http:// or https://, got {full['url']!r}")
    if launcher in ("vllm", "vllm-cpu") and not full["model"]:
        raise fail("model", "vLLM profiles need a model: 'tiny', a folder or a hub id")
    for key, value in full["env"].items():
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise fail(f"env.{key}", f"environment values must be strings or numbers, got "
                                     f"{value!r}")
    if not all(isinstance(a, str) for a in full["extra_args"]):
        raise fail("extra_args", "must be a list of strings")
    if launcher == "sim" and full["sim"]:
        from ..sim.config import SimConfig

        try:
            SimConfig.from_mapping(full["sim"], source=f"{source}:{lines.at('sim')}: sim")
        except ConfigError as exc:
            raise ConfigError(str(exc)) from None
    kv = full["kv"]
    used = sorted((c for c in _CONNECTORS if kv.get(c) is not None),
                  key=lambda c: lines.at(f"kv.{c}"))
    if len(used) > 1:
        raise fail(f"kv.{used[1]}", f"only one KV connector per profile; also set: "
                                    f"kv.{used[0]} (use transfer_config for a MultiConnector)")
    offload = kv.get("offload")
    if offload is not None:
        if offload["backend"] not in ("native", "lmcache"):
            raise fail("kv.offload.backend",
                       f"must be native or lmcache, got {offload['backend']!r}")
        if not offload["size_gib"]:
            raise fail("kv.offload.size_gib", "set the offload size in GiB (> 0)")
        if used and not (used == ["lmcache"] and offload["backend"] == "lmcache"):
            raise fail("kv.offload", f"cannot be combined with kv.{used[0]}")
        if launcher == "vllm-cpu":
            raise fail("kv.offload", "vLLM's native CPU offload only runs on CUDA / XPU "
                                     "GPUs; on vllm-cpu use kv.disk_store")
    if kv.get("lmcache") is not None and kv["lmcache"]["disk_path"] is None \
            and kv["lmcache"]["disk_size_gib"]:
        raise fail("kv.lmcache.disk_size_gib", "set kv.lmcache.disk_path as well")
    gmu = full["engine"]["gpu_memory_utilization"]
    if gmu is not None and not 0 < gmu <= 1:
        raise fail("engine.gpu_memory_utilization", f"must be in (0, 1], got {gmu!r}")
    if full["engine"]["tensor_parallel_size"] < 1:
        raise fail("engine.tensor_parallel_size", "must be >= 1")
    return ServerProfile(name=profile_name, launcher=launcher, data=full, source=source)


def load_profile(path: Path) -> ServerProfile:
    """Read and validate one profile file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read server profile: {exc}") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    return parse_profile(data, source=str(path), name=path.stem, node=node)


def bundled_dir() -> Path:
    """``fixtures/servers`` of the project (a source checkout)."""
    return Path(__file__).resolve().parents[2] / "fixtures" / "servers"


def _dirs(dirs: Sequence[Path] | None) -> list[Path]:
    out = [Path(d) for d in dirs or ()]
    out.append(bundled_dir())
    return out


def available_profiles(dirs: Sequence[Path] | None = None) -> list[str]:
    """``sim``, ``url``, then every profile file name found, sorted."""
    names: set[str] = set()
    for d in _dirs(dirs):
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return ["sim", "url", *sorted(names - {"sim", "url"})]


def find_profile(name: str, dirs: Sequence[Path] | None = None) -> ServerProfile:
    """Resolve ``name`` (a profile name or a path to a ``.yaml`` file) in ``dirs`` then
    the bundled profiles; ``sim`` falls back to the default simulator."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return load_profile(candidate)
    for d in _dirs(dirs):
        for suffix in (".yaml", ".yml"):
            path = d / f"{name}{suffix}"
            if path.is_file():
                return load_profile(path)
    if name == "sim":
        return parse_profile({"launcher": "sim"}, name="sim")
    raise ConfigError(f"unknown server {name!r}; valid: "
                      f"{', '.join(available_profiles(dirs))} (server profiles are looked up "
                      f"in {', '.join(str(d) for d in _dirs(dirs))})")
