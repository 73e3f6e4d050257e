"""A roofline step-time model built from a :class:`~pytest_ctxplat.sim.hardware.HardwareProfile`.

One engine step is one forward pass over every scheduled token (prefill chunks and
decodes together, as vLLM V1 batches them). Each layer runs its linear layers (matmuls
over all tokens, reading the weights) and then its attention kernel (reading the KV of
every scheduled sequence); the two are separate kernels that run one after the other,
so their times add. Each is bound by compute or by HBM bandwidth, whichever is slower::

    step = max(linear FLOPs / (peak x compute_efficiency), weight bytes / bandwidth)
         + max(attention FLOPs / (peak x attention_efficiency), KV bytes / bandwidth)
         + step_overhead_s + admitted requests x request_overhead_s
         + tensor-parallel all-reduce time
    bandwidth = HBM peak x bandwidth_efficiency

* linear FLOPs = 2 x params x tokens; attention FLOPs = 4 x layers x heads x head_dim x
  (query-key pairs): prefill pairs ``n x (context + (n+1)/2)`` per request (attention
  over cached context included), one pair per context token per decoding sequence.
* KV bytes = the context of every prefilling and decoding sequence (read) plus one
  token's KV per scheduled token (written).
* With ``tp`` GPUs, peak FLOP/s and bandwidth are ``tp`` times one GPU's, and each layer
  does two all-reduces of ``tokens x hidden x dtype`` bytes: ring time
  ``2 (tp-1)/tp x bytes / interconnect`` plus ``allreduce_latency_s`` each.

So a decode step of Llama-3.1-8B (16 GB of bf16 weights) at batch 8 on one H100 takes
about 16.1 GB / (3.35 TB/s x 0.8) + 1.5 ms = 7.5 ms (vLLM's CI measures 7.8).
"""

from __future__ import annotations

from dataclasses import dataclass

from pytest_ctxplat.sim.hardware import HardwareProfile
from pytest_ctxplat.sim.timing import StepWork

__all__ = ["RooflineTimingModel", "StepCost"]


@dataclass(frozen=True, slots=True)
class StepCost:
    """The parts of one step's time (seconds): the linear layers' compute and weight
    reads, the attention's compute and KV reads, communication and fixed overhead."""

    linear_compute_s: float
    linear_memory_s: float
    attention_compute_s: float
    attention_memory_s: float
    comm_s: float
    overhead_s: float

    @property
    def compute_s(self) -> float:
        return self.linear_compute_s + self.attention_compute_s

    @property
    def memory_s(self) -> float:
        return self.linear_memory_s + self.attention_memory_s

    @property
    def linear_s(self) -> float:
        return max(self.linear_compute_s, self.linear_memory_s)

    @property
    def attention_s(self) -> float:
        return max(self.attention_compute_s, self.attention_memory_s)

    @property
    def total_s(self) -> float:
        return self.linear_s + self.attention_s + self.comm_s + self.overhead_s

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"


_IDLE = StepCost(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


class RooflineTimingModel:
    """Step times of ``profile``'s model on ``profile.tp`` accelerators."""

    def __init__(self, profile: HardwareProfile) -> None:
        m, a = profile.model, profile.accelerator
        params, hidden, heads = m.dense_shape()
        tp = profile.tp
        self.profile = profile
        peak = tp * a.bf16_tflops * 1e12
        self.linear_flops_per_s = peak * a.compute_efficiency
        attention = a.compute_efficiency if a.attention_efficiency is None \
            else a.attention_efficiency
        self.attention_flops_per_s = peak * attention
        self.bytes_per_s = tp * a.hbm_tbs * 1e12 * a.bandwidth_efficiency
        self.weight_bytes = m.weight_bytes
        self.kv_bytes = m.kv_bytes_per_token
        self.flops_per_token = 2.0 * params
        self.flops_per_pair = 4.0 * m.layers * heads * m.head_dim
        self.overhead_s = a.step_overhead_s
        self.request_overhead_s = a.request_overhead_s
        self.tp = tp
        # all-reduce: 2 per layer, ring algorithm
        self.ar_count = 2 * m.layers
        self.ar_bytes_per_token = hidden * m.dtype_bytes
        self.ar_s_per_byte = 2 * (tp - 1) / tp / (a.interconnect_gbs * 1e9) if tp > 1 else 0.0
        self.ar_latency_s = a.allreduce_latency_s if tp > 1 else 0.0

    def cost(self, work: StepWork) -> StepCost:
        tokens = work.prefill_tokens + work.decode_seqs
        if tokens == 0:
            return _IDLE
        pairs = work.prefill_attention_pairs + work.decode_context_tokens
        kv_read = work.prefill_context_tokens + work.prefill_tokens + work.decode_context_tokens
        comm = 0.0
        if self.tp > 1:
            comm = self.ar_count * (self.ar_latency_s
                                    + tokens * self.ar_bytes_per_token * self.ar_s_per_byte)
        return StepCost(
            linear_compute_s=self.flops_per_token * tokens / self.linear_flops_per_s,
            linear_memory_s=self.weight_bytes / self.bytes_per_s,
            attention_compute_s=self.flops_per_pair * pairs / self.attention_flops_per_s,
            attention_memory_s=self.kv_bytes * (kv_read + tokens) / self.bytes_per_s,
            comm_s=comm,
            overhead_s=self.overhead_s + work.admitted * self.request_overhead_s)

    def step_time(self, work: StepWork) -> float:
        return self.cost(work).total_s
