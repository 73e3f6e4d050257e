"""The simulator's knobs to prove a release gate works: ``slowdown`` and ``jitter``
(virtual time, so every figure is exact), ``--ctxplat-sim-set`` keys, ``/version``."""

from __future__ import annotations

import httpx
import pytest

from pytest_ctxplat import simulate
from pytest_ctxplat.errors import ConfigError
from pytest_ctxplat.servers.sim import apply_sim_set
from pytest_ctxplat.sim.config import SimConfig
from pytest_ctxplat.sim.engine import Engine
from pytest_ctxplat.sim.hardware import load_hardware
from pytest_ctxplat.sim.server import serve_in_thread
from pytest_ctxplat.sim.timing import LinearTimingModel, Perturbed, StepWork
from pytest_ctxplat.version import __version__

ONE_USER = {"users": 1, "max_requests": 4}


def _latencies(**profile_overrides: object) -> list[tuple[float, float]]:
    r = simulate("chat", "h100-llama8b", overrides=ONE_USER, seed=0,
                 profile_overrides=profile_overrides)
    return [(rec.ttft_s or 0.0, rec.e2e_s or 0.0) for rec in r.records]


def test_slowdown_multiplies_every_modelled_duration() -> None:
    base = _latencies()
    slow = _latencies(slowdown=1.3)
    assert len(base) == len(slow) == 4
    for (t0, e0), (t1, e1) in zip(base, slow, strict=True):
        assert t1 == pytest.approx(1.3 * t0, rel=1e-6)
        assert e1 == pytest.approx(1.3 * e0, rel=1e-6)


def test_slowdown_also_slows_tier_transfers() -> None:
    profile = load_hardware("h100-llama8b-dram", {"slowdown": 2})
    engine = Engine(SimConfig(), profile=profile)
    plain = Engine(SimConfig(), profile=load_hardware("h100-llama8b-dram"))
    slow_tier, tier = engine.tiers.tiers[0], plain.tiers.tiers[0]
    assert slow_tier.read_s_per_block == pytest.approx(2 * tier.read_s_per_block)
    assert slow_tier.write_s_per_block == pytest.approx(2 * tier.write_s_per_block)


def test_sim_config_slowdown_multiplies_the_linear_model_and_the_profile() -> None:
    work = StepWork(prefill_tokens=100, decode_seqs=4, decode_context_tokens=400)
    linear = LinearTimingModel(SimConfig()).step_time(work)
    assert Engine(SimConfig(slowdown=1.5)).timing.step_time(work) == pytest.approx(1.5 * linear)
    both = Engine(SimConfig(slowdown=2.0), profile=load_hardware("h100-llama8b",
                                                                 {"slowdown": 1.5}))
    assert both.slowdown == pytest.approx(3.0)


def test_jitter_is_reproducible_with_a_seed_and_centred_on_the_model() -> None:
    seeded = _latencies(jitter=0.2, jitter_seed=7)
    assert seeded == _latencies(jitter=0.2, jitter_seed=7)
    assert seeded != _latencies(jitter=0.2, jitter_seed=8)
    assert seeded != _latencies()
    noisy = Perturbed(LinearTimingModel(SimConfig()), jitter=0.1)
    work = StepWork(decode_seqs=1)
    times = [noisy.step_time(work) for _ in range(2000)]
    exact = LinearTimingModel(SimConfig()).step_time(work)
    assert min(times) >= exact * noisy.min_factor
    assert sum(times) / len(times) == pytest.approx(exact, rel=0.02)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"slowdown": 0}, "slowdown: must be > 0"),
    ({"jitter": -0.1}, "jitter: must be >= 0"),
])
def test_bad_knobs_name_the_key(overrides: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_hardware("h100-llama8b", overrides)
    with pytest.raises(ConfigError, match=message):
        SimConfig.from_mapping(overrides, "sim.yaml")


def test_sim_set_sets_config_keys_and_dotted_profile_keys() -> None:
    assert apply_sim_set({"seed": 0}, {"slowdown": 1.3, "jitter": 0.05}) == {
        "seed": 0, "slowdown": 1.3, "jitter": 0.05}
    out = apply_sim_set({"profile": "h100-llama8b-dram"}, {"tiers.1.capacity_gb": 64})
    assert out["profile_overrides"] == {"tiers.1.capacity_gb": 64}
    with pytest.raises(ConfigError, match=r"--ctxplat-sim-set: tiers\.1\.capacity_gb: unknown "
                                          r"simulator key; valid: .*slowdown"):
        apply_sim_set({}, {"tiers.1.capacity_gb": 64})
    with pytest.raises(ConfigError, match="capacity_gb"):
        apply_sim_set({"profile": "h100-llama8b-dram"}, {"tiers.1.capacity_gb": -1})


def test_version_endpoint_names_the_simulator_and_package_version() -> None:
    with serve_in_thread(SimConfig(speedup=50)) as sim:
        data = httpx.get(f"{sim.url}/version", timeout=10).json()
    assert data == {"name": "ctxplat-sim", "version": __version__}
