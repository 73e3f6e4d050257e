"""Configuration of the embedded simulator.

:class:`SimConfig` describes the simulated model server: KV-cache geometry, scheduler
limits and the timing coefficients of one engine step. The defaults are roughly an 8B
model in bf16 on one H100 (about 400k tokens of KV cache in HBM).

With ``profile`` set (a hardware profile: a built-in name or a YAML file, see
:mod:`pytest_ctxplat.sim.hardware`), the profile decides the block size, KV capacity, KV
tiers, scheduler limits and the (roofline) timing; the linear coefficients,
``kv_capacity_tokens``, ``block_size``, ``max_num_seqs`` and ``max_num_batched_tokens``
given here are then ignored. ``profile_overrides`` are dotted profile keys
(``{"tiers.1.capacity_gb": 64}``).

Timing is in *model* seconds; ``speedup`` makes real time run that many times faster
(every sleep is divided by it). ``slowdown`` multiplies every modelled duration (step
times, tier and KV-link transfers; with a profile, on top of the profile's own) and
``jitter`` is the sigma of lognormal noise on each step time (seeded by ``jitter_seed``,
else OS entropy): knobs to check that a release gate catches a regression.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from pytest_ctxplat.config import FieldError, Validated, build, read_yaml, setting

__all__ = ["SimConfig"]

@dataclass(frozen=True, kw_only=True)
class SimConfig(Validated):
    """Settings of one simulated inference server (immutable, keyword-only)."""

    model: str = setting("ctxplat-sim", non_empty=True, doc="served model name")
    block_size: int = setting(16, ge=1, doc="KV block size in tokens")
    kv_capacity_tokens: int = setting(400_000, ge=1, doc="HBM KV capacity in tokens")
    max_num_seqs: int = setting(256, ge=1, doc="most sequences in a batch")
    max_num_batched_tokens: int = setting(8192, ge=1, doc="token budget of one step")
    prefill_s_per_token: float = setting(2.7e-5, ge=0, doc="linear timing: prefill")
    prefill_s_per_cached_token: float = setting(0.0, ge=0, doc="linear timing: cached")
    decode_step_base_s: float = setting(0.0055, ge=0, doc="linear timing: step base")
    decode_s_per_seq: float = setting(5e-5, ge=0, doc="linear timing: per sequence")
    decode_s_per_context_token: float = setting(4.4e-8, ge=0, doc="linear timing: per "
                                                "context token")
    speedup: float = setting(1.0, gt=0, doc="real time runs this many times faster")
    vocab_size: int = setting(32000, ge=32, doc="token ids are below this")
    seed: int = setting(0, ge=0, doc="seed of the generated tokens")
    max_model_len: int = setting(131072, ge=2, doc="longest prompt + output")
    profile: str | None = setting(None, non_empty=True, doc="a hardware profile: a "
                                  "built-in name or a YAML file")
    profile_overrides: Mapping[str, Any] | None = setting(None, doc="dotted profile keys")
    slowdown: float = setting(1.0, gt=0, doc="multiplies every modelled duration")
    jitter: float = setting(0.0, ge=0, le=2, doc="sigma of lognormal noise per step")
    jitter_seed: int | None = setting(None, ge=0, doc="seed of the noise (None: OS "
                                      "entropy)")
    ignore_reset: bool = setting(False, doc="answer POST /reset_prefix_cache with "
                                 "success but keep every tier's blocks (to test cold checks)")

    def validate(self) -> None:
        for name in ("prefill_s_per_token", "prefill_s_per_cached_token",
                     "decode_step_base_s", "decode_s_per_seq", "decode_s_per_context_token",
                     "speedup", "slowdown", "jitter"):
            if not math.isfinite(getattr(self, name)):
                raise FieldError(name, f"must be finite, got {getattr(self, name)!r}")
        if self.kv_capacity_tokens < self.block_size:
            raise FieldError("kv_capacity_tokens", f"must be >= block_size "
                                                   f"({self.block_size}), got "
                                                   f"{self.kv_capacity_tokens}")

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
        """Build from a mapping (e.g. parsed YAML): unknown keys, wrong types and bad
        values raise :class:`ConfigError` naming ``source``, the key and what is valid."""
        return build(cls, data, source)

    @classmethod
    def from_yaml(cls, path: str | PathLike[str]) -> SimConfig:
        """Read a YAML file holding one mapping of settings (an empty file = defaults)."""
        data, src = read_yaml(Path(path))
        return build(cls, {} if data is None else data, src)
