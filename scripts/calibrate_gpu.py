"""Measure a GPU for the simulator and write a calibration YAML.

On a machine with an NVIDIA GPU, PyTorch and transformers::

    python scripts/calibrate_gpu.py --out calibration-h100.yaml \
        --models llama-3.1-8b,qwen3-32b

It times, in bf16 on one GPU:

* an 8192^3 matmul (TFLOP/s), a 1 GiB device-to-device copy (TB/s, read + write bytes),
  pinned host-to-device and device-to-host copies of 1 GiB (GB/s);
* for each model of ``models.yaml``: a dummy-weight (random) Llama-architecture model of
  that shape, built with ``transformers`` (``LlamaConfig``; Qwen3-32B's shape is run as a
  Llama, the attention and MLP cost the same), prefill of 1k/4k/8k tokens and decode
  steps at batch 1/8/32 over 1k/4k contexts (static KV cache, CUDA-synchronised timing,
  median of several runs). A model too big for the GPU is cut to the layers that fit and
  its times are scaled by ``layers / layers_run`` (per-layer efficiency is what the
  simulator needs; embeddings and the LM head are a few percent).

The file is what :mod:`pytest_ctxplat.sim.calibration` loads (``calibration: FILE`` in a
profile). Everything but :func:`measure` is plain Python and unit-tested without a GPU.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from pytest_ctxplat.catalog import ModelSpec, load_model
from pytest_ctxplat.sim.calibration import SCHEMA, parse_calibration

PREFILL_TOKENS = (1024, 4096, 8192)
DECODE_POINTS = ((1, 1024), (8, 1024), (32, 1024), (1, 4096), (32, 4096))


def hf_config(model: ModelSpec, layers: int) -> dict[str, Any]:
    """``LlamaConfig`` keyword arguments of ``model`` cut to ``layers`` layers. The MLP
    width is solved from the parameter count (what attention, norms and a 128k-token
    embedding and LM head leave, over three h x intermediate matrices), rounded to 256:
    14,336 for Llama-3.1-8B and 28,672 for 70B, their real widths."""
    h, heads, kv, d = model.hidden_size, model.heads, model.kv_heads, model.head_dim
    vocab = 128_256
    attn = h * heads * d * 2 + h * kv * d * 2  # q, o, k, v projections
    per_layer_rest = model.params / model.layers - attn - 2 * h  # norms
    per_layer_rest -= 2 * vocab * h / model.layers  # embeddings and LM head, spread
    intermediate = max(h, round(per_layer_rest / (3 * h) / 256) * 256)
    return {"hidden_size": h, "num_attention_heads": heads, "num_key_value_heads": kv,
            "head_dim": d, "num_hidden_layers": layers, "intermediate_size": intermediate,
            "vocab_size": vocab, "max_position_embeddings": 32_768,
            "torch_dtype": "bfloat16"}


def layers_that_fit(model: ModelSpec, free_bytes: float, kv_tokens: int,
                    headroom: float = 0.8) -> int:
    """How many layers of ``model`` fit in ``free_bytes`` with ``kv_tokens`` of KV."""
    per_layer = model.weight_bytes / model.layers + kv_tokens * model.kv_bytes_per_token \
        / model.layers
    return max(1, min(model.layers, int(free_bytes * headroom / per_layer)))


def scale(seconds: float, model: ModelSpec, layers_run: int) -> float:
    """Seconds of the whole model from a run of ``layers_run`` layers."""
    return seconds * model.layers / layers_run


def median_time(fn: Callable[[], None], sync: Callable[[], None], repeat: int = 5,
                warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build_calibration(device: str, matmul_tflops: float, hbm_copy_tbs: float,
                      h2d_gbs: float, d2h_gbs: float,
                      models: Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]],
                      now: _dt.datetime | None = None) -> dict[str, Any]:
    """The calibration mapping (validated by the simulator's own parser)."""
    stamp = (now or _dt.datetime.now(_dt.timezone.utc)).isoformat(timespec="seconds")
    data = {"schema": SCHEMA, "device": device, "date": stamp,
            "matmul_tflops": round(matmul_tflops, 2), "hbm_copy_tbs": round(hbm_copy_tbs, 3),
            "h2d_gbs": round(h2d_gbs, 2), "d2h_gbs": round(d2h_gbs, 2),
            "models": {k: {kind: [dict(p) for p in pts] for kind, pts in v.items()}
                       for k, v in models.items()}}
    parse_calibration(data, "calibration")
    return data


def _device_figures(torch: Any, dev: Any, sync: Callable[[], None]
                    ) -> tuple[float, float, float, float]:
    """Matmul TFLOP/s, device copy TB/s, host-to-device and device-to-host GB/s."""
    n = 8192
    a = torch.randn(n, n, dtype=torch.bfloat16, device=dev)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=dev)
    matmul = 2 * n**3 / median_time(lambda: torch.matmul(a, b), sync, repeat=10) / 1e12
    size = 1 << 30
    src = torch.empty(size, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    copy = 2 * size / median_time(lambda: dst.copy_(src), sync, repeat=10) / 1e12
    host = torch.empty(size, dtype=torch.uint8, pin_memory=True)
    h2d = size / median_time(lambda: src.copy_(host, non_blocking=True), sync) / 1e9
    d2h = size / median_time(lambda: host.copy_(src, non_blocking=True), sync) / 1e9
    return matmul, copy, h2d, d2h


def _model_points(torch: Any, dev: Any, sync: Callable[[], None], key: str
                  ) -> dict[str, list[dict[str, float]]]:
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.cache_utils import StaticCache

    spec = load_model(key)
    free, _total = torch.cuda.mem_get_info(dev)
    kv_tokens = max(max(bt * (c + 64) for bt, c in DECODE_POINTS), max(PREFILL_TOKENS) + 64)
    layers = layers_that_fit(spec, free, kv_tokens)
    cfg = LlamaConfig(**hf_config(spec, layers))
    with torch.device(dev):
        lm = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    points: dict[str, list[dict[str, float]]] = {"prefill": [], "decode": []}
    with torch.inference_mode():
        for tokens in PREFILL_TOKENS:
            ids = torch.randint(16, 30_000, (1, tokens), device=dev)

            def prefill(ids: Any = ids) -> None:
                lm(ids, use_cache=False)

            s = median_time(prefill, sync, repeat=3)
            points["prefill"].append({"tokens": tokens, "context": 0,
                                      "seconds": scale(s, spec, layers)})
        for batch, context in DECODE_POINTS:
            cache = StaticCache(config=cfg, max_batch_size=batch, max_cache_len=context + 64,
                                device=dev, dtype=torch.bfloat16)
            lm(torch.randint(16, 30_000, (batch, context), device=dev),
               past_key_values=cache, use_cache=True)
            step = torch.randint(16, 30_000, (batch, 1), device=dev)
            pos = torch.tensor([context], device=dev)

            def decode(step: Any = step, cache: Any = cache, pos: Any = pos) -> None:
                lm(step, past_key_values=cache, cache_position=pos, use_cache=True)

            s = median_time(decode, sync, repeat=10)
            points["decode"].append({"batch": batch, "context": context,
                                     "seconds": scale(s, spec, layers)})
    return points


def measure(model_keys: Sequence[str], device: str = "cuda:0") -> dict[str, Any]:
    """Run every measurement on the GPU (needs torch + transformers)."""
    import torch

    dev = torch.device(device)

    def sync() -> None:
        torch.cuda.synchronize(dev)

    matmul, copy, h2d, d2h = _device_figures(torch, dev, sync)
    torch.cuda.empty_cache()
    models = {}
    for key in model_keys:
        models[key] = _model_points(torch, dev, sync, key)
        torch.cuda.empty_cache()
    return build_calibration(torch.cuda.get_device_name(dev), matmul, copy, h2d, d2h, models)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="calibration YAML to write")
    ap.add_argument("--models", default="llama-3.1-8b",
                    help="comma-separated models.yaml keys. Default: %(default)s")
    ap.add_argument("--device", default="cuda:0")
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("calibrate_gpu: needs PyTorch and transformers (pip install torch "
              "transformers)", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("calibrate_gpu: no CUDA device is available", file=sys.stderr)
        return 2
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    for key in keys:
        load_model(key)  # fail early on a bad key
    data = measure(keys, args.device)
    Path(args.out).write_text(yaml.safe_dump(data, sort_keys=False))
    print(f"wrote {args.out}: {data['device']}, matmul {data['matmul_tflops']} TFLOP/s, "
          f"copy {data['hbm_copy_tbs']} TB/s, H2D {data['h2d_gbs']} GB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
