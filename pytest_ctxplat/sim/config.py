"""Configuration of the embedded simulator.

:class:`SimConfig` describes the simulated model server: KV-cache geometry, scheduler
limits and the timing coefficients of one engine step. The defaults are roughly an 8B
model in bf16 on one H100 (about 400k tokens of KV cache in HBM).

With ``profile`` set (a built-in profile name or a YAML file, see
:mod:`pytest_ctxplat.sim.profile`), the profile decides the block size, KV capacity, KV
tiers, scheduler limits and the (roofline) timing; the linear coefficients,
``kv_capacity_tokens``, ``block_size``, ``max_num_seqs`` and ``max_num_batched_tokens``
given here are then ignored. ``profile_overrides`` are dotted profile keys
(``{"tiers.1.capacity_gb": 64}``).

Timing is in *model* seconds; ``speedup`` makes real time run that many times faster
(every sleep is divided by it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from pytest_ctxplat.errors import ConfigError

__all__ = ["SimConfig"]

_INT_MIN: dict[str, int] = {
    "block_size": 1,
    "kv_capacity_tokens": 1,
    "max_num_seqs": 1,
    "max_num_batched_tokens": 1,
    "vocab_size": 32,
    "seed": 0,
    "max_model_len": 2,
}
_FLOAT_NONNEG = (
    "prefill_s_per_token",
    "prefill_s_per_cached_token",
    "decode_step_base_s",
    "decode_s_per_seq",
    "decode_s_per_context_token",
)


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """Settings of one simulated inference server (immutable, keyword-only)."""

    model: str = "ctxplat-sim"
    block_size: int = 16
    kv_capacity_tokens: int = 400_000
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    prefill_s_per_token: float = 2.7e-5
    prefill_s_per_cached_token: float = 0.0
    decode_step_base_s: float = 0.0055
    decode_s_per_seq: float = 5e-5
    decode_s_per_context_token: float = 4.4e-8
    speedup: float = 1.0
    vocab_size: int = 32000
    seed: int = 0
    max_model_len: int = 131072
    profile: str | None = None
    profile_overrides: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.profile is not None and (not isinstance(self.profile, str) or not self.profile):
            raise ConfigError(
                f"SimConfig.profile must be a profile name or YAML path, got {self.profile!r}")
        if self.profile_overrides is not None and not isinstance(self.profile_overrides,
                                                                 Mapping):
            raise ConfigError("SimConfig.profile_overrides must be a mapping of dotted keys")
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"SimConfig.model must be a non-empty string, got {self.model!r}")
        for name, low in _INT_MIN.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"SimConfig.{name} must be an integer >= {low}, got {value!r}")
        for name in _FLOAT_NONNEG:
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value < 0:
                raise ConfigError(
                    f"SimConfig.{name} must be a finite number >= 0 (seconds), got {value!r}"
                )
        if not _is_real(self.speedup) or not math.isfinite(self.speedup) or self.speedup <= 0:
            raise ConfigError(
                f"SimConfig.speedup must be a finite number > 0, got {self.speedup!r}"
            )
        if self.kv_capacity_tokens < self.block_size:
            raise ConfigError(
                f"SimConfig.kv_capacity_tokens must be >= block_size ({self.block_size}), "
                f"got {self.kv_capacity_tokens}"
            )

    @property
    def num_kv_blocks(self) -> int:
        """KV capacity in blocks (``kv_capacity_tokens // block_size``)."""
        return self.kv_capacity_tokens // self.block_size

    def replace(self, **changes: Any) -> SimConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "<mapping>") -> SimConfig:
        """Build from a mapping (e.g. parsed YAML). Unknown keys raise :class:`ConfigError`
        naming the key, ``source`` and the valid keys. Integers are accepted for float
        fields."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: simulator config must be a mapping, got {data!r}")
        valid = cls.field_names()
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in valid:
                raise ConfigError(
                    f"{source}: unknown simulator setting {key!r}; valid keys: " + ", ".join(valid)
                )
            kwargs[str(key)] = value
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_yaml(cls, path: str | PathLike[str]) -> SimConfig:
        """Read a YAML file holding one mapping of settings (an empty file = defaults)."""
        import yaml

        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read simulator config: {exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: invalid YAML: {exc}") from None
        return cls.from_mapping({} if data is None else data, source=str(p))


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
