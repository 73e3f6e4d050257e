"""Hardware profiles: a simulated deployment (a model, an accelerator, KV tiers and
scheduler limits), as data.

Built-in profiles live in ``builtin/hardware.yaml``; models and accelerators come from
the package's one table (:mod:`pytest_ctxplat.catalog`). :func:`load_hardware` takes a
built-in name or a YAML file holding one profile mapping, applies ``extends`` and
dotted-key overrides (``{"tiers.1.capacity_gb": 64, "tp": 2}``), and validates
everything through the config layer: every error names the file, line and key (or the
override).

Profile keys: ``model`` and ``accelerator`` (a built-in name or an inline mapping),
``tp`` (tensor-parallel degree), ``scheduler`` (``block_size``, ``max_num_seqs``,
``max_num_batched_tokens``), ``tiers`` (a list, HBM first), ``write_policy`` (``drop`` or
``stall``), ``replicas``, ``router``, ``disaggregation``, ``calibration`` (a file
written by ``scripts/calibrate_gpu.py``), and the knobs ``slowdown`` (default 1.0:
multiplies every modelled duration), ``jitter`` (default 0: sigma of lognormal noise on
each step time), ``jitter_seed`` (default: OS entropy) and ``ignore_reset`` (default
false: when true, a cache reset is answered with success but every tier keeps its blocks,
so a cold-state check can be tested).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pytest_ctxplat.builtin import DATA
from pytest_ctxplat.catalog import AcceleratorSpec, ModelSpec, load_accelerator, load_model
from pytest_ctxplat.config import (
    FieldError,
    Source,
    Validated,
    build,
    layered,
    merge,
    read_resource,
    read_yaml,
    set_dotted,
    setting,
)
from pytest_ctxplat.errors import ConfigError
from pytest_ctxplat.sim.calibration import apply_calibration, load_calibration

__all__ = [
    "DisaggSpec",
    "HardwareProfile",
    "TierSpec",
    "hardware_names",
    "load_hardware",
]

WRITE_POLICIES = ("drop", "stall")
ROUTERS = ("round_robin", "prefix", "session", "least_loaded")


@dataclass(frozen=True, kw_only=True)
class TierConfig(Validated):
    """One tier as written in a profile (capacities not yet resolved)."""

    name: str = setting(non_empty=True, doc="hbm (first), dram, nvme, ...")
    capacity_gb: float | None = setting(None, gt=0, doc="capacity in GB (1e9 bytes)")
    capacity_tokens: int | None = setting(None, gt=0, doc="capacity in tokens")
    utilization: float | None = setting(None, gt=0, le=1, doc="HBM: share of memory "
                                        "(default 0.9) for weights and KV")
    read_gbs: float | None = setting(None, gt=0, doc="load bandwidth into HBM, GB/s")
    write_gbs: float | None = setting(None, gt=0, doc="store bandwidth from HBM, GB/s")
    latency_s: float = setting(0.0, ge=0, doc="per-transfer latency")
    ttl_s: float | None = setting(None, gt=0, doc="evict blocks unused this long")
    write_queue_s: float = setting(0.005, ge=0, doc="stores queued longer are dropped "
                                   "(write_policy: drop)")


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig(Validated):
    block_size: int = setting(16, ge=1, doc="KV block size in tokens")
    max_num_seqs: int = setting(256, ge=1, doc="most sequences in a batch")
    max_num_batched_tokens: int = setting(8192, ge=1, doc="token budget of one step")


@dataclass(frozen=True, kw_only=True)
class DisaggSpec(Validated):
    """Disaggregated prefill/decode: pool sizes and the KV transfer link between them."""

    prefill_replicas: int = setting(1, ge=1)
    decode_replicas: int = setting(1, ge=1)
    transfer_gbs: float = setting(50.0, gt=0)
    latency_s: float = setting(1e-4, ge=0)


@dataclass(frozen=True, kw_only=True)
class HardwareConfig(Validated):
    """A hardware profile as written (``extends`` already applied)."""

    description: str = ""
    model: str | dict[str, Any] = setting(doc="a built-in model or a shape")
    accelerator: str | dict[str, Any] = setting(doc="a built-in accelerator or its figures")
    tp: int = setting(1, ge=1, doc="tensor-parallel degree")
    scheduler: SchedulerConfig = dataclasses.field(default_factory=SchedulerConfig)
    tiers: tuple[TierConfig, ...] = setting(non_empty=True, doc="KV tiers, HBM first")
    write_policy: str = setting("drop", choices=WRITE_POLICIES)
    replicas: int = setting(1, ge=1)
    router: str = setting("prefix", choices=ROUTERS)
    disaggregation: DisaggSpec | None = None
    calibration: str | None = setting(None, path=True, doc="a calibration file")
    slowdown: float = setting(1.0, gt=0, doc="multiplies every modelled duration")
    jitter: float = setting(0.0, ge=0, le=2, doc="sigma of lognormal noise per step")
    jitter_seed: int | None = setting(None, ge=0, doc="seed of the noise")
    ignore_reset: bool = setting(False, doc="report resets as done but keep every block")

    def validate(self) -> None:
        if not math.isfinite(self.slowdown):
            raise FieldError("slowdown", f"must be finite, got {self.slowdown!r}")
        names: set[str] = set()
        for i, t in enumerate(self.tiers):
            if (i == 0) != (t.name == "hbm"):
                raise FieldError(f"tiers.{i}.name", "the first tier, and only it, must be "
                                                    f"named 'hbm', got {t.name!r}")
            if t.name in names:
                raise FieldError(f"tiers.{i}.name", f"tier {t.name!r} appears twice")
            names.add(t.name)
            if i == 0:
                continue
            for key in ("read_gbs", "write_gbs"):
                if getattr(t, key) is None:
                    raise FieldError(f"tiers.{i}", f"missing {key} (GB/s)")
            if t.capacity_gb is None and t.capacity_tokens is None:
                raise FieldError(f"tiers.{i}", "give capacity_gb or capacity_tokens")


@dataclass(frozen=True, kw_only=True)
class TierSpec:
    """One KV tier with its capacity resolved (HBM: from memory minus weights)."""

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
class HardwareProfile:
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
    slowdown: float = 1.0
    jitter: float = 0.0
    jitter_seed: int | None = None
    ignore_reset: bool = False

    @property
    def hbm(self) -> TierSpec:
        return self.tiers[0]

    @property
    def block_bytes(self) -> int:
        return self.block_size * self.model.kv_bytes_per_token

    def replace(self, **changes: Any) -> HardwareProfile:
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
            **({"slowdown": self.slowdown} if self.slowdown != 1.0 else {}),
            **({"jitter": self.jitter} if self.jitter else {}),
        }  # fmt: skip


@cache
def _builtins() -> tuple[dict[str, Any], Source]:
    data, src = read_resource(DATA, "hardware.yaml")
    return dict(data or {}), src


def hardware_names() -> list[str]:
    """The built-in hardware profiles."""
    return sorted(_builtins()[0])


def _raw(ref: str, seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], Source]:
    """The raw mapping of profile ``ref`` (``extends`` applied) and its source."""
    builtins, bsrc = _builtins()
    path = Path(ref)
    if ref in builtins:
        data, src = builtins[ref], bsrc.sub(ref)
    elif path.suffix in (".yaml", ".yml"):
        data, src = read_yaml(path)
    else:
        raise ConfigError(f"unknown simulator profile {ref!r}: give a YAML file or one of "
                          + ", ".join(builtins))
    if not isinstance(data, Mapping):
        raise src.error("", "a profile holds one mapping")
    data = dict(data)
    parent = data.pop("extends", None)
    if parent is None:
        return data, src
    if not isinstance(parent, str) or parent in seen or parent == ref:
        raise src.error("extends", f"must name another profile, got {parent!r}")
    try:
        base, base_src = _raw(parent, (*seen, ref))
    except ConfigError as exc:  # no such profile, a bad file: say which file named it
        raise src.error("extends", str(exc)) from None
    return merge(base, data), layered(base_src, src, data)


def load_hardware(ref: str, overrides: Mapping[str, Any] | None = None) -> HardwareProfile:
    """Resolve a built-in profile name or a YAML file, apply dotted ``overrides``."""
    data, src = _raw(ref)
    if overrides:
        nested: dict[str, Any] = {}
        for key, value in overrides.items():
            set_dotted(data, key, value, "profile override")
            set_dotted(nested, key, value, "profile override")
        src = layered(src, Source("profile override"), nested)
    name = Path(ref).stem if ref.endswith((".yaml", ".yml")) else ref
    return resolve(build(HardwareConfig, data, src), src, name)


def resolve(cfg: HardwareConfig, src: Source, name: str = "custom") -> HardwareProfile:
    """The profile ``cfg`` describes: model and accelerator looked up, calibration
    applied, tier capacities in tokens."""
    model = load_model(cfg.model, src, "model")
    if not model.timed:
        raise src.error("model", f"{model.key!r} gives its KV geometry only; the roofline "
                                 "needs params, hidden_size and heads")
    accel = load_accelerator(cfg.accelerator, src, "accelerator")
    if cfg.calibration is not None:
        try:
            calibration = load_calibration(cfg.calibration)
        except ConfigError as exc:  # located at the key that names the file, too
            raise src.error("calibration", str(exc)) from None
        try:
            accel = apply_calibration(accel, model, calibration)
        except FieldError as exc:  # figures too far out give no usable accelerator
            raise src.error("calibration", f"{cfg.calibration} gives {accel.key} "
                                           f"{exc.key} {exc.problem}") from None
    block_size = cfg.scheduler.block_size
    tiers = tuple(_tier(t, i, src, model, accel, cfg.tp, block_size)
                  for i, t in enumerate(cfg.tiers))
    return HardwareProfile(
        name=name, model=model, accelerator=accel, tp=cfg.tp, block_size=block_size,
        max_num_seqs=cfg.scheduler.max_num_seqs,
        max_num_batched_tokens=cfg.scheduler.max_num_batched_tokens, tiers=tiers,
        write_policy=cfg.write_policy, replicas=cfg.replicas, router=cfg.router,
        disaggregation=cfg.disaggregation, calibration=cfg.calibration,
        slowdown=cfg.slowdown, jitter=cfg.jitter, jitter_seed=cfg.jitter_seed,
        ignore_reset=cfg.ignore_reset)


def _tier(t: TierConfig, i: int, src: Source, model: ModelSpec, accel: AcceleratorSpec,
          tp: int, block_size: int) -> TierSpec:
    per_token = model.kv_bytes_per_token
    if t.capacity_tokens is not None:
        if t.capacity_tokens < block_size:
            raise src.error(f"tiers.{i}.capacity_tokens", f"must be >= the block size "
                                                          f"({block_size})")
        cap = t.capacity_tokens
    elif t.capacity_gb is not None:
        cap = _whole(t.capacity_gb * 1e9 / per_token, src, f"tiers.{i}.capacity_gb")
    else:  # HBM: what the weights leave of the accelerators' memory
        util = 0.9 if t.utilization is None else t.utilization
        cap = _whole((accel.hbm_gb * 1e9 * tp * util - model.weight_bytes) / per_token, src,
                     f"tiers.{i}")
        if cap < block_size:
            raise src.error(f"tiers.{i}", f"{model.key} weights "
                                          f"({model.weight_bytes / 1e9:.0f} GB) leave no KV "
                                          f"room in {tp} x {accel.hbm_gb:g} GB x {util:g}; "
                                          "raise tp")
    if t.name == "hbm":
        return TierSpec(name=t.name, capacity_tokens=cap, ttl_s=t.ttl_s)
    assert t.read_gbs is not None and t.write_gbs is not None  # validated
    return TierSpec(name=t.name, capacity_tokens=cap, read_gbs=t.read_gbs,
                    write_gbs=t.write_gbs, latency_s=t.latency_s, ttl_s=t.ttl_s,
                    write_queue_s=t.write_queue_s)


def _whole(tokens: float, src: Source, path: str) -> int:
    """A capacity in tokens as an integer; one too large to count is an error."""
    if not (math.isfinite(tokens) and abs(tokens) < 2**63):
        raise src.error(path, f"gives a KV capacity of {tokens:g} tokens, more than can be "
                              "counted; check the sizes")
    return int(tokens)
