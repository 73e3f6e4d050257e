"""Model profiles: KV-cache bytes per token, to turn token working sets into GB.

KV bytes per token = 2 (K and V) x layers x kv_heads x head_dim x dtype bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["MODEL_PROFILES", "ModelProfile", "model_profile"]


@dataclass(frozen=True)
class ModelProfile:
    name: str
    layers: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int = 2

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    def gb(self, tokens: float) -> float:
        """``tokens`` of KV cache in GB (10^9 bytes)."""
        return tokens * self.kv_bytes_per_token / 1e9

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "layers": self.layers, "kv_heads": self.kv_heads,
                "head_dim": self.head_dim, "dtype_bytes": self.dtype_bytes,
                "kv_bytes_per_token": self.kv_bytes_per_token}


# KV geometry of models the simulator does not time (it has no MoE roofline); the models
# it does time come from its own table, sim/profiles/models.yaml, the single source.
_KV_ONLY = (
    ModelProfile("llama-3.1-405b", 126, 8, 128),
    ModelProfile("qwen2.5-7b", 28, 4, 128),
    ModelProfile("qwen2.5-32b", 64, 8, 128),
    ModelProfile("qwen3-235b-a22b", 94, 4, 128),
    ModelProfile("mistral-7b", 32, 8, 128),
)


def _builtin() -> dict[str, ModelProfile]:
    from ..sim.profile import builtin_models, load_model

    def natural(name: str) -> list[object]:  # llama-3.1-8b before llama-3.1-70b
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]

    out = {}
    for name in sorted(builtin_models(), key=natural):
        m = load_model(name)
        out[name] = ModelProfile(name, m.layers, m.kv_heads, m.head_dim, m.dtype_bytes)
    for p in _KV_ONLY:
        out.setdefault(p.name, p)
    return out


MODEL_PROFILES: dict[str, ModelProfile] = _builtin()

_CUSTOM = re.compile(r"^(\d+)x(\d+)x(\d+)(?:x(\d+))?$")


def model_profile(name: str) -> ModelProfile:
    """A built-in profile by name, or ``LAYERSxKV_HEADSxHEAD_DIM[xDTYPE_BYTES]``
    (e.g. ``32x8x128x2``)."""
    if name in MODEL_PROFILES:
        return MODEL_PROFILES[name]
    m = _CUSTOM.match(name)
    if m:
        layers, heads, dim = (int(m.group(i)) for i in (1, 2, 3))
        dtype = int(m.group(4) or 2)
        if min(layers, heads, dim, dtype) <= 0:
            raise ConfigError(f"model profile {name!r}: every factor must be > 0")
        return ModelProfile(name, layers, heads, dim, dtype)
    valid = ", ".join(MODEL_PROFILES)
    raise ConfigError(
        f"unknown model profile {name!r}; valid: {valid}, or LAYERSxKV_HEADSxHEAD_DIM"
        "[xDTYPE_BYTES] such as 32x8x128x2"
    )
