"""Model shapes and accelerators: one table (``builtin/models.yaml``,
``builtin/accelerators.yaml``) for the simulator's roofline and the analysis's GB
figures.

KV bytes per token = 2 (K and V) x layers x kv_heads x head_dim x dtype bytes. A model
given by its KV geometry only (no ``params``, ``hidden_size``, ``heads``: a mixture of
experts, say) serves the analysis but cannot be timed by the simulator.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from functools import cache
from typing import Any

from .builtin import DATA
from .config import Source, Validated, build, read_resource, setting
from .errors import ConfigError

__all__ = ["AcceleratorSpec", "ModelSpec", "accelerator_names", "load_accelerator",
           "load_model", "model_for_sizing", "model_names"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSpec(Validated):
    """A transformer's shape. ``params`` counts all weights (None: KV geometry only)."""

    key: str = setting("custom", internal=True)
    name: str = setting("", doc="the model's name (default: its key)")
    layers: int = setting(gt=0)
    kv_heads: int = setting(gt=0)
    head_dim: int = setting(gt=0)
    dtype_bytes: int = setting(2, gt=0, doc="bytes per weight and per KV element")
    hidden_size: int | None = setting(None, gt=0)
    heads: int | None = setting(None, gt=0)
    params: float | None = setting(None, gt=0)

    @property
    def kv_bytes_per_token(self) -> int:
        """2 (K and V) x layers x kv_heads x head_dim x dtype bytes."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def timed(self) -> bool:
        """Whether the roofline can time it (a dense model with its full shape)."""
        return None not in (self.params, self.hidden_size, self.heads)

    def dense_shape(self) -> tuple[float, int, int]:
        """``(params, hidden_size, heads)`` for the roofline; a ConfigError for a model
        given by its KV geometry only."""
        if self.params is None or self.hidden_size is None or self.heads is None:
            raise ConfigError(f"model {self.key!r} gives its KV geometry only; the roofline "
                              "needs params, hidden_size and heads")
        return self.params, self.hidden_size, self.heads

    @property
    def weight_bytes(self) -> float:
        return self.dense_shape()[0] * self.dtype_bytes

    def gb(self, tokens: float) -> float:
        """``tokens`` of KV cache in GB (10^9 bytes)."""
        return tokens * self.kv_bytes_per_token / 1e9

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.key, "layers": self.layers, "kv_heads": self.kv_heads,
                "head_dim": self.head_dim, "dtype_bytes": self.dtype_bytes,
                "kv_bytes_per_token": self.kv_bytes_per_token}


@dataclasses.dataclass(frozen=True, kw_only=True)
class AcceleratorSpec(Validated):
    """One GPU: memory, peak rates and the efficiency factors the roofline applies.

    ``compute_efficiency`` is achieved / peak FLOP/s of the matmuls (the linear layers);
    ``attention_efficiency`` that of the attention kernels (None: the same as
    ``compute_efficiency``); ``bandwidth_efficiency`` achieved / peak HBM bandwidth of
    decode kernels; ``step_overhead_s`` the fixed time of one engine step (scheduling,
    sampling, launches); ``request_overhead_s`` the engine's CPU time per request it
    admits; ``allreduce_latency_s`` the fixed cost of one all-reduce.
    """

    key: str = setting("custom", internal=True)
    name: str = setting("", doc="the accelerator's name (default: its key)")
    hbm_gb: float = setting(gt=0)
    hbm_tbs: float = setting(gt=0)
    bf16_tflops: float = setting(gt=0)
    compute_efficiency: float = setting(0.6, gt=0, le=1, doc="matmuls: achieved / peak")
    attention_efficiency: float | None = setting(None, gt=0, le=1, doc="attention: achieved "
                                                 "/ peak (default: compute_efficiency)")
    bandwidth_efficiency: float = setting(0.8, gt=0, le=1)
    step_overhead_s: float = setting(0.0008, ge=0)
    request_overhead_s: float = setting(0.0, ge=0, doc="engine CPU time per request "
                                        "admitted, added to the step admitting it")
    interconnect_gbs: float = setting(450.0, gt=0)
    allreduce_latency_s: float = setting(1e-5, ge=0)
    host_link_gbs: float = setting(64.0, gt=0)


@cache
def _table(name: str) -> tuple[dict[str, Any], Source]:
    data, src = read_resource(DATA, name)
    return dict(data or {}), src


def _natural(name: str) -> list[Any]:
    """Sort key putting llama-3.1-8b before llama-3.1-70b."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name)]


def model_names() -> list[str]:
    return sorted(_table("models.yaml")[0], key=_natural)


def accelerator_names() -> list[str]:
    return sorted(_table("accelerators.yaml")[0])


def _load(cls: Any, table: str, ref: str | Mapping[str, Any], source: Source, path: str,
          what: str) -> Any:
    if isinstance(ref, Mapping):
        obj = build(cls, ref, source, path)
        return dataclasses.replace(obj, name=obj.name or "custom")
    if not isinstance(ref, str):
        raise source.error(path, f"must be a built-in {what} name or a mapping, got {ref!r}")
    data, src = _table(table)
    if ref not in data:
        raise source.error(path, f"unknown {what} {ref!r}", ", ".join(sorted(data)))
    obj = build(cls, data[ref], src, ref)
    return dataclasses.replace(obj, key=ref, name=obj.name or ref)


def load_model(ref: str | Mapping[str, Any], source: Source | str = "model", path: str = ""
               ) -> ModelSpec:
    """A built-in model by key, or a shape given inline (errors located in ``source``)."""
    src = source if isinstance(source, Source) else Source(source)
    model: ModelSpec = _load(ModelSpec, "models.yaml", ref, src, path, "model")
    return model


def load_accelerator(ref: str | Mapping[str, Any], source: Source | str = "accelerator",
                     path: str = "") -> AcceleratorSpec:
    """A built-in accelerator by key, or one given inline."""
    src = source if isinstance(source, Source) else Source(source)
    accel: AcceleratorSpec = _load(AcceleratorSpec, "accelerators.yaml", ref, src, path,
                                   "accelerator")
    return accel


_CUSTOM = re.compile(r"^(\d+)x(\d+)x(\d+)(?:x(\d+))?$")


def model_for_sizing(name: str) -> ModelSpec:
    """A model for KV sizing: a built-in key, or ``LAYERSxKV_HEADSxHEAD_DIM[xDTYPE_BYTES]``
    (e.g. ``32x8x128x2``)."""
    if name in _table("models.yaml")[0]:
        return load_model(name)
    m = _CUSTOM.match(name)
    if m:
        layers, heads, dim = (int(m.group(i)) for i in (1, 2, 3))
        dtype = int(m.group(4) or 2)
        if min(layers, heads, dim, dtype) <= 0:
            raise ConfigError(f"model {name!r}: every factor must be > 0")
        return ModelSpec(key=name, name=name, layers=layers, kv_heads=heads, head_dim=dim,
                         dtype_bytes=dtype)
    raise ConfigError(f"unknown model {name!r}; valid: {', '.join(model_names())}, or "
                      "LAYERSxKV_HEADSxHEAD_DIM[xDTYPE_BYTES] such as 32x8x128x2")
