"""Simulator profiles: a model, an accelerator, KV tiers and scheduler limits, as data.

Built-in data lives in ``sim/profiles/``: ``models.yaml``, ``accelerators.yaml`` and
``profiles.yaml`` (named profiles). :func:`load_profile` takes a built-in profile name or
a YAML file holding one profile mapping, applies ``extends`` and dotted-key overrides
(``{"tiers.1.capacity_gb": 64, "tp": 2}``), and validates everything, naming the source
and key of any bad value.

Profile keys: ``model`` and ``accelerator`` (a built-in name or an inline mapping),
``tp`` (tensor-parallel degree), ``scheduler`` (``block_size``, ``max_num_seqs``,
``max_num_batched_tokens``), ``tiers`` (a list, HBM first), ``write_policy`` (``drop`` or
``stall``), ``replicas``, ``router``, ``disaggregation`` and ``calibration`` (a file
written by ``scripts/calibrate_gpu.py``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from pytest_ctxplat.errors import ConfigError

__all__ = [
    "AcceleratorSpec",
    "DisaggSpec",
    "ModelSpec",
    "Profile",
    "TierSpec",
    "builtin_profiles",
    "load_accelerator",
    "load_model",
    "load_profile",
]

DATA = Path(__file__).resolve().parent / "profiles"
WRITE_POLICIES = ("drop", "stall")
ROUTERS = ("round_robin", "prefix", "session", "least_loaded")
_PROFILE_KEYS = ("extends", "description", "model", "accelerator", "tp", "scheduler",
                 "tiers", "write_policy", "replicas", "router", "disaggregation",
                 "calibration")  # fmt: skip


@cache
def _read(name: str) -> dict[str, Any]:
    data = yaml.safe_load((DATA / name).read_text(encoding="utf-8"))
    return dict(data or {})


def _num(value: Any, where: str, *, low: float = 0.0, strict: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < low or (strict and value <= low):
        rel = ">" if strict else ">="
        raise ConfigError(f"{where} must be a number {rel} {low:g}, got {value!r}")
    return float(value)


def _int(value: Any, where: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{where} must be an integer >= {low}, got {value!r}")
    return value


def _fields(cls: type[Any], data: Mapping[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    names = [f.name for f in dataclasses.fields(cls) if f.name != "key"]
    for key in data:
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys: {', '.join(names)}")
    return dict(data)


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A dense transformer's shape. ``params`` counts all weights."""

    key: str = "custom"
    name: str
    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    params: float
    dtype_bytes: int = 2

    @property
    def kv_bytes_per_token(self) -> int:
        """2 (K and V) x layers x kv_heads x head_dim x dtype bytes."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def weight_bytes(self) -> float:
        return self.params * self.dtype_bytes

    @classmethod
    def parse(cls, data: Mapping[str, Any], where: str, key: str = "custom") -> ModelSpec:
        d = _fields(cls, data, where)
        for k in ("layers", "hidden_size", "heads", "kv_heads", "head_dim", "dtype_bytes"):
            if k in d:
                d[k] = _int(d[k], f"{where}.{k}")
        if "params" in d:
            d["params"] = _num(d["params"], f"{where}.params", strict=True)
        if not isinstance(d.get("name", key), str):
            raise ConfigError(f"{where}.name must be a string")
        d.setdefault("name", key)
        try:
            return cls(key=key, **d)
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class AcceleratorSpec:
    """One GPU: memory, peak rates and the efficiency factors the roofline applies."""

    key: str = "custom"
    name: str
    hbm_gb: float
    hbm_tbs: float
    bf16_tflops: float
    compute_efficiency: float = 0.6
    bandwidth_efficiency: float = 0.8
    step_overhead_s: float = 0.0008
    interconnect_gbs: float = 450.0
    allreduce_latency_s: float = 1e-5
    host_link_gbs: float = 64.0

    @classmethod
    def parse(cls, data: Mapping[str, Any], where: str, key: str = "custom") -> AcceleratorSpec:
        d = _fields(cls, data, where)
        for k, v in list(d.items()):
            if k == "name":
                continue
            d[k] = _num(v, f"{where}.{k}", strict=k not in ("step_overhead_s",
                                                            "allreduce_latency_s"))
            if k.endswith("efficiency") and d[k] > 1:
                raise ConfigError(f"{where}.{k} must be in (0, 1], got {v!r}")
        d.setdefault("name", key)
        try:
            return cls(key=key, **d)
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class TierSpec:
    """One KV tier. ``capacity_tokens`` is resolved (HBM: from memory minus weights)."""

    name: str
    capacity_tokens: int
    read_gbs: float = math.inf
    write_gbs: float = math.inf
    latency_s: float = 0.0
    ttl_s: float | None = None
    write_queue_s: float = 0.005

    @property
    def transfer_name(self) -> str:
        """The tier's name in vLLM's ``transfer_type`` label (``GPU``, ``CPU``, ...)."""
        return {"hbm": "GPU", "dram": "CPU"}.get(self.name, self.name.upper())


@dataclass(frozen=True, kw_only=True)
class DisaggSpec:
    """Disaggregated prefill/decode: pool sizes and the KV transfer link between them."""

    prefill_replicas: int = 1
    decode_replicas: int = 1
    transfer_gbs: float = 50.0
    latency_s: float = 1e-4


@dataclass(frozen=True, kw_only=True)
class Profile:
    """A simulated deployment (one replica's hardware, times ``replicas``)."""

    name: str
    model: ModelSpec
    accelerator: AcceleratorSpec
    tp: int = 1
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    tiers: tuple[TierSpec, ...]
    write_policy: str = "drop"
    replicas: int = 1
    router: str = "prefix"
    disaggregation: DisaggSpec | None = None
    calibration: str | None = None

    @property
    def hbm(self) -> TierSpec:
        return self.tiers[0]

    @property
    def block_bytes(self) -> int:
        return self.block_size * self.model.kv_bytes_per_token

    def replace(self, **changes: Any) -> Profile:
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (results carry it)."""
        return {
            "name": self.name, "model": self.model.key, "accelerator": self.accelerator.key,
            "tp": self.tp, "replicas": self.replicas, "router": self.router,
            "block_size": self.block_size, "write_policy": self.write_policy,
            "disaggregated": self.disaggregation is not None,
            "tiers": [{"name": t.name, "capacity_tokens": t.capacity_tokens,
                       "read_gbs": t.read_gbs, "write_gbs": t.write_gbs, "ttl_s": t.ttl_s}
                      for t in self.tiers],
        }  # fmt: skip


def builtin_profiles() -> list[str]:
    return sorted(_read("profiles.yaml"))


def builtin_models() -> list[str]:
    return sorted(_read("models.yaml"))


def load_model(ref: str | Mapping[str, Any], where: str = "model") -> ModelSpec:
    if isinstance(ref, Mapping):
        return ModelSpec.parse(ref, where)
    models = _read("models.yaml")
    if ref not in models:
        raise ConfigError(f"{where}: unknown model {ref!r}; built-in: {', '.join(models)}")
    return ModelSpec.parse(models[ref], f"models.yaml:{ref}", key=ref)


def load_accelerator(ref: str | Mapping[str, Any], where: str = "accelerator"
                     ) -> AcceleratorSpec:
    if isinstance(ref, Mapping):
        return AcceleratorSpec.parse(ref, where)
    accels = _read("accelerators.yaml")
    if ref not in accels:
        raise ConfigError(f"{where}: unknown accelerator {ref!r}; built-in: {', '.join(accels)}")
    return AcceleratorSpec.parse(accels[ref], f"accelerators.yaml:{ref}", key=ref)


def _raw(ref: str, seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    """The raw mapping of a profile (``extends`` applied) and where it came from."""
    builtins = _read("profiles.yaml")
    path = Path(ref)
    if ref in builtins:
        data, source = dict(builtins[ref]), f"profiles.yaml:{ref}"
    elif path.suffix in (".yaml", ".yml") and path.is_file():
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: a profile file must hold one mapping")
        data, source = dict(loaded), str(path)
    else:
        raise ConfigError(f"unknown simulator profile {ref!r}: give a YAML file or one of "
                          + ", ".join(builtins))
    for key in data:
        if key not in _PROFILE_KEYS:
            raise ConfigError(f"{source}: unknown key {key!r}; valid keys: "
                              + ", ".join(_PROFILE_KEYS))
    parent = data.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str) or parent in seen:
            raise ConfigError(f"{source}: extends must name another profile, got {parent!r}")
        base, _ = _raw(parent, (*seen, ref))
        merged = dict(base)
        for k, v in data.items():
            if isinstance(v, Mapping) and isinstance(merged.get(k), Mapping):
                merged[k] = {**merged[k], **v}
            else:
                merged[k] = v
        data = merged
    return data, source


def _set_dotted(data: dict[str, Any], key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{where}: {key!r}: no list item {part!r} "
                                  f"(the list has {len(node)} items)")
            if last:
                node[int(part)] = value
            else:
                node[int(part)] = _copy(node[int(part)])
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node[part] = _copy(node.get(part, {}))
                node = node[part]
        else:
            raise ConfigError(f"{where}: {key!r}: {'.'.join(parts[:i])} is not a mapping/list")


def _copy(v: Any) -> Any:
    if isinstance(v, Mapping):
        return dict(v)
    if isinstance(v, list):
        return list(v)
    return v


def load_profile(ref: str, overrides: Mapping[str, Any] | None = None) -> Profile:
    """Resolve a built-in profile name or a YAML file, apply dotted ``overrides``."""
    data, source = _raw(ref)
    data = {k: _copy(v) for k, v in data.items()}
    for key, value in (overrides or {}).items():
        if key.split(".")[0] not in _PROFILE_KEYS:
            raise ConfigError(f"profile override {key!r}: unknown key {key.split('.')[0]!r}; "
                              "valid keys: " + ", ".join(_PROFILE_KEYS))
        _set_dotted(data, key, value, "profile override")
    return parse_profile(data, source, name=Path(ref).stem if ref.endswith("yaml") else ref)


def parse_profile(data: Mapping[str, Any], source: str, name: str = "custom") -> Profile:
    """Validate a raw profile mapping (``extends`` already applied)."""
    data = dict(data)
    data.pop("description", None)
    for req in ("model", "accelerator", "tiers"):
        if req not in data:
            raise ConfigError(f"{source}: missing key {req!r}")
    model = load_model(data["model"], f"{source}: model")
    accel = load_accelerator(data["accelerator"], f"{source}: accelerator")
    calibration = data.get("calibration")
    if calibration is not None:
        from pytest_ctxplat.sim.calibration import apply_calibration, load_calibration

        accel = apply_calibration(accel, model, load_calibration(str(calibration)))
    tp = _int(data.get("tp", 1), f"{source}: tp")
    sched = _fields_plain(data.get("scheduler", {}), f"{source}: scheduler",
                          ("block_size", "max_num_seqs", "max_num_batched_tokens"))
    block_size = _int(sched.get("block_size", 16), f"{source}: scheduler.block_size")
    policy = data.get("write_policy", "drop")
    if policy not in WRITE_POLICIES:
        raise ConfigError(f"{source}: write_policy must be one of {', '.join(WRITE_POLICIES)},"
                          f" got {policy!r}")
    router = data.get("router", "prefix")
    if router not in ROUTERS:
        raise ConfigError(f"{source}: router must be one of {', '.join(ROUTERS)}, "
                          f"got {router!r}")
    tiers = _parse_tiers(data["tiers"], source, model, accel, tp, block_size)
    disagg = None
    if data.get("disaggregation") is not None:
        d = _fields_plain(data["disaggregation"], f"{source}: disaggregation",
                          ("prefill_replicas", "decode_replicas", "transfer_gbs", "latency_s"))
        disagg = DisaggSpec(
            prefill_replicas=_int(d.get("prefill_replicas", 1),
                                  f"{source}: disaggregation.prefill_replicas"),
            decode_replicas=_int(d.get("decode_replicas", 1),
                                 f"{source}: disaggregation.decode_replicas"),
            transfer_gbs=_num(d.get("transfer_gbs", 50.0),
                              f"{source}: disaggregation.transfer_gbs", strict=True),
            latency_s=_num(d.get("latency_s", 1e-4), f"{source}: disaggregation.latency_s"))
    return Profile(
        name=name, model=model, accelerator=accel, tp=tp, block_size=block_size,
        max_num_seqs=_int(sched.get("max_num_seqs", 256), f"{source}: scheduler.max_num_seqs"),
        max_num_batched_tokens=_int(sched.get("max_num_batched_tokens", 8192),
                                    f"{source}: scheduler.max_num_batched_tokens"),
        tiers=tiers, write_policy=policy,
        replicas=_int(data.get("replicas", 1), f"{source}: replicas"), router=router,
        disaggregation=disagg, calibration=None if calibration is None else str(calibration))


def _fields_plain(data: Any, where: str, valid: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    for key in data:
        if key not in valid:
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys: {', '.join(valid)}")
    return dict(data)


_TIER_KEYS = ("name", "capacity_gb", "capacity_tokens", "utilization", "read_gbs",
              "write_gbs", "latency_s", "ttl_s", "write_queue_s")


def _parse_tiers(raw: Any, source: str, model: ModelSpec, accel: AcceleratorSpec, tp: int,
                 block_size: int) -> tuple[TierSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{source}: tiers must be a non-empty list, HBM first")
    out: list[TierSpec] = []
    names: set[str] = set()
    per_token = model.kv_bytes_per_token
    for i, item in enumerate(raw):
        where = f"{source}: tiers[{i}]"
        d = _fields_plain(item, where, _TIER_KEYS)
        name = d.get("name")
        if not isinstance(name, str) or not name or name in names:
            raise ConfigError(f"{where}.name must be a unique non-empty string, got {name!r}")
        if (i == 0) != (name == "hbm"):
            raise ConfigError(f"{where}: the first tier, and only it, must be named 'hbm'")
        names.add(name)
        if "capacity_tokens" in d:
            cap = _int(d["capacity_tokens"], f"{where}.capacity_tokens", block_size)
        elif "capacity_gb" in d:
            cap = int(_num(d["capacity_gb"], f"{where}.capacity_gb", strict=True) * 1e9
                      / per_token)
        elif name == "hbm":
            util = _num(d.get("utilization", 0.9), f"{where}.utilization", strict=True)
            if util > 1:
                raise ConfigError(f"{where}.utilization must be in (0, 1], got {util}")
            free = accel.hbm_gb * 1e9 * tp * util - model.weight_bytes
            cap = int(free / per_token)
            if cap < block_size:
                raise ConfigError(
                    f"{where}: {model.key} weights ({model.weight_bytes / 1e9:.0f} GB) leave no "
                    f"KV room in {tp} x {accel.hbm_gb:g} GB x {util:g}; raise tp")
        else:
            raise ConfigError(f"{where}: give capacity_gb or capacity_tokens")
        ttl = d.get("ttl_s")
        kw: dict[str, Any] = {"name": name, "capacity_tokens": cap,
                              "ttl_s": None if ttl is None else _num(ttl, f"{where}.ttl_s",
                                                                      strict=True)}
        if name != "hbm":
            for k in ("read_gbs", "write_gbs"):
                if k not in d:
                    raise ConfigError(f"{where}: missing {k} (GB/s)")
                kw[k] = _num(d[k], f"{where}.{k}", strict=True)
            kw["latency_s"] = _num(d.get("latency_s", 0.0), f"{where}.latency_s")
            kw["write_queue_s"] = _num(d.get("write_queue_s", 0.005), f"{where}.write_queue_s")
        out.append(TierSpec(**kw))
    return tuple(out)
