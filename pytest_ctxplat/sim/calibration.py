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

* with prefill points for the profile's model: ``compute_efficiency`` = median of
  (roofline FLOPs of the point / seconds) / peak; else ``matmul_tflops / peak x
  MODEL_MATMUL_FRACTION`` (a whole forward pass reaches about 3/4 of a pure matmul);
* with two or more decode points: a least-squares fit of ``seconds = overhead + bytes /
  (peak x bandwidth_efficiency)`` gives both ``step_overhead_s`` and
  ``bandwidth_efficiency``; one point gives the efficiency (overhead kept); none:
  ``hbm_copy_tbs / peak``;
* ``host_link_gbs`` = ``min(h2d_gbs, d2h_gbs)``.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pytest_ctxplat.errors import ConfigError
from pytest_ctxplat.sim.profile import AcceleratorSpec, ModelSpec

__all__ = ["MODEL_MATMUL_FRACTION", "SCHEMA", "Calibration", "apply_calibration",
           "load_calibration", "parse_calibration"]

SCHEMA = "ctxplat-calibration/1"
MODEL_MATMUL_FRACTION = 0.75


@dataclass(frozen=True, kw_only=True)
class Calibration:
    device: str
    date: str
    matmul_tflops: float
    hbm_copy_tbs: float
    h2d_gbs: float
    d2h_gbs: float
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **dataclasses.asdict(self)}


def _pos(d: Mapping[str, Any], key: str, where: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
        raise ConfigError(f"{where}: {key} must be a number > 0, got {v!r}")
    return float(v)


def parse_calibration(data: Any, where: str) -> Calibration:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: a calibration file must hold one mapping")
    if data.get("schema") != SCHEMA:
        raise ConfigError(f"{where}: schema must be {SCHEMA!r}, got {data.get('schema')!r}")
    valid = ("schema", "device", "date", "matmul_tflops", "hbm_copy_tbs", "h2d_gbs",
             "d2h_gbs", "models")
    for key in data:
        if key not in valid:
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys: {', '.join(valid)}")
    models = data.get("models") or {}
    if not isinstance(models, Mapping):
        raise ConfigError(f"{where}: models must be a mapping of model key -> points")
    for name, m in models.items():
        if not isinstance(m, Mapping):
            raise ConfigError(f"{where}: models.{name} must be a mapping")
        for kind, keys in (("prefill", ("tokens", "seconds")),
                           ("decode", ("batch", "context", "seconds"))):
            points = m.get(kind, [])
            if not isinstance(points, list):
                raise ConfigError(f"{where}: models.{name}.{kind} must be a list")
            for i, p in enumerate(points):
                if not isinstance(p, Mapping):
                    raise ConfigError(f"{where}: models.{name}.{kind}[{i}] must be a mapping")
                for k in keys:
                    _pos(p, k, f"{where}: models.{name}.{kind}[{i}]")
    return Calibration(device=str(data.get("device", "unknown")),
                       date=str(data.get("date", "unknown")),
                       matmul_tflops=_pos(data, "matmul_tflops", where),
                       hbm_copy_tbs=_pos(data, "hbm_copy_tbs", where),
                       h2d_gbs=_pos(data, "h2d_gbs", where),
                       d2h_gbs=_pos(data, "d2h_gbs", where), models=dict(models))


def load_calibration(path: str | Path) -> Calibration:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{p}: cannot read calibration: {exc}") from None
    return parse_calibration(data, str(p))


def prefill_flops(model: ModelSpec, tokens: int, context: int = 0) -> float:
    """Roofline FLOPs of one prefill of ``tokens`` new tokens after ``context``."""
    pairs = tokens * (context + (tokens + 1) / 2)
    return 2.0 * model.params * tokens + 4.0 * model.layers * model.heads * model.head_dim * pairs


def decode_bytes(model: ModelSpec, batch: int, context: int) -> float:
    """Roofline bytes of one decode step: weights plus the KV of every sequence."""
    return model.weight_bytes + model.kv_bytes_per_token * batch * (context + 1)


def apply_calibration(accel: AcceleratorSpec, model: ModelSpec, cal: Calibration
                      ) -> AcceleratorSpec:
    """``accel`` with efficiency factors, step overhead and host link from ``cal``."""
    peak_flops = accel.bf16_tflops * 1e12
    peak_bw = accel.hbm_tbs * 1e12
    points = cal.models.get(model.key, {})
    prefill = points.get("prefill", [])
    if prefill:
        compute = statistics.median(
            prefill_flops(model, int(p["tokens"]), int(p.get("context", 0))) / p["seconds"]
            for p in prefill) / peak_flops
    else:
        compute = cal.matmul_tflops * 1e12 / peak_flops * MODEL_MATMUL_FRACTION
    overhead = accel.step_overhead_s
    decode = points.get("decode", [])
    xs = [decode_bytes(model, int(p["batch"]), int(p["context"])) for p in decode]
    ys = [float(p["seconds"]) for p in decode]
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
        accel, compute_efficiency=min(1.0, compute), bandwidth_efficiency=min(1.0, bandwidth),
        step_overhead_s=overhead, host_link_gbs=min(cal.h2d_gbs, cal.d2h_gbs))
