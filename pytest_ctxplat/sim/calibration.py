"""Calibration files: measured GPU figures that replace a profile's efficiency factors.

``scripts/calibrate_gpu.py`` writes one on a machine with a GPU; a profile names it with
``calibration: PATH``. Format (YAML)::

    schema: ctxplat-calibration/1
    device: NVIDIA H100 80GB HBM3      # torch.cuda.get_device_name()
    date: "2026-11-23T20:00:00Z"
    matmul_tflops: 798.0               # bf16 8192^3 matmul
    hbm_copy_tbs: 3.0                  # device-to-device copy (read + write counted)
    h2d_gbs: 55.0                      # pinned host -> device
    d2h_gbs: 52.0                      # device -> pinned host
    models:                            # optional, per model key of models.yaml
      llama-3.1-8b:
        prefill: [{tokens: 4096, context: 0, seconds: 0.19}]
        decode: [{batch: 1, context: 1024, seconds: 0.0071}, {batch: 32, ...}]

How it is applied (:func:`apply_calibration`):

* with prefill points for the profile's model: ``compute_efficiency`` and
  ``attention_efficiency`` = median of (roofline FLOPs of the point / seconds) / peak (one
  blended figure: the points do not separate matmuls from attention); else
  ``compute_efficiency`` = ``matmul_tflops / peak x MODEL_MATMUL_FRACTION`` (the linear
  layers of a forward pass reach about 0.93 of a pure 8192^3 matmul: the H100 figure
  fitted to published points, 0.749, over the measured 798 / 989) and attention keeps
  the profile's figure;
* with two or more decode points: a least-squares fit of ``seconds = overhead + bytes /
  (peak x bandwidth_efficiency)`` gives both ``step_overhead_s`` and
  ``bandwidth_efficiency``; one point gives the efficiency (overhead kept); none:
  ``hbm_copy_tbs / peak``;
* ``host_link_gbs`` = ``min(h2d_gbs, d2h_gbs)``.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_ctxplat.catalog import AcceleratorSpec, ModelSpec
from pytest_ctxplat.config import Source, Validated, build, read_yaml, setting

__all__ = ["MODEL_MATMUL_FRACTION", "SCHEMA", "Calibration", "DecodePoint", "ModelPoints",
           "PrefillPoint", "apply_calibration", "load_calibration", "parse_calibration"]

SCHEMA = "ctxplat-calibration/1"
MODEL_MATMUL_FRACTION = 0.93


@dataclass(frozen=True, kw_only=True)
class PrefillPoint(Validated):
    tokens: int = setting(gt=0, doc="new tokens prefilled")
    context: int = setting(0, ge=0, doc="tokens already in the KV cache")
    seconds: float = setting(gt=0)


@dataclass(frozen=True, kw_only=True)
class DecodePoint(Validated):
    batch: int = setting(gt=0, doc="sequences decoding together")
    context: int = setting(ge=0, doc="context of each sequence")
    seconds: float = setting(gt=0, doc="one step")


@dataclass(frozen=True, kw_only=True)
class ModelPoints(Validated):
    prefill: tuple[PrefillPoint, ...] = ()
    decode: tuple[DecodePoint, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Calibration(Validated):
    schema: str = setting(choices=(SCHEMA,), doc=f"always {SCHEMA}")
    device: str = "unknown"
    date: str = "unknown"
    matmul_tflops: float = setting(gt=0)
    hbm_copy_tbs: float = setting(gt=0)
    h2d_gbs: float = setting(gt=0)
    d2h_gbs: float = setting(gt=0)
    models: dict[str, ModelPoints] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_calibration(data: Any, source: Source | str) -> Calibration:
    return build(Calibration, data, source)


def load_calibration(path: str | Path) -> Calibration:
    return parse_calibration(*read_yaml(path))


def prefill_flops(model: ModelSpec, tokens: int, context: int = 0) -> float:
    """Roofline FLOPs of one prefill of ``tokens`` new tokens after ``context``."""
    params, _hidden, heads = model.dense_shape()
    pairs = tokens * (context + (tokens + 1) / 2)
    return 2.0 * params * tokens + 4.0 * model.layers * heads * model.head_dim * pairs


def decode_bytes(model: ModelSpec, batch: int, context: int) -> float:
    """Roofline bytes of one decode step: weights plus the KV of every sequence."""
    return model.weight_bytes + model.kv_bytes_per_token * batch * (context + 1)


def apply_calibration(accel: AcceleratorSpec, model: ModelSpec, cal: Calibration
                      ) -> AcceleratorSpec:
    """``accel`` with efficiency factors, step overhead and host link from ``cal``."""
    peak_flops = accel.bf16_tflops * 1e12
    peak_bw = accel.hbm_tbs * 1e12
    points = cal.models.get(model.key, ModelPoints())
    prefill = points.prefill
    attention = accel.attention_efficiency
    if prefill:
        compute = statistics.median(
            prefill_flops(model, p.tokens, p.context) / p.seconds for p in prefill
        ) / peak_flops
        attention = min(1.0, compute)
    else:
        compute = cal.matmul_tflops * 1e12 / peak_flops * MODEL_MATMUL_FRACTION
    overhead = accel.step_overhead_s
    decode = points.decode
    xs = [decode_bytes(model, p.batch, p.context) for p in decode]
    ys = [p.seconds for p in decode]
    if len(decode) >= 2 and len(set(xs)) >= 2:
        slope, intercept = statistics.linear_regression(xs, ys)
        if slope > 0:
            bandwidth = 1.0 / (slope * peak_bw)
            overhead = max(0.0, intercept)
        else:
            bandwidth = statistics.median(x / y for x, y in zip(xs, ys, strict=True)) / peak_bw
    elif decode:
        bandwidth = xs[0] / max(ys[0] - overhead, ys[0] / 2) / peak_bw
    else:
        bandwidth = cal.hbm_copy_tbs * 1e12 / peak_bw
    return dataclasses.replace(
        accel, compute_efficiency=min(1.0, compute), attention_efficiency=attention,
        bandwidth_efficiency=min(1.0, bandwidth),
        step_overhead_s=overhead, host_link_gbs=min(cal.h2d_gbs, cal.d2h_gbs))
