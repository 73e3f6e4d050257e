"""The pure parts of scripts/calibrate_gpu.py (the measuring part needs a GPU)."""

from __future__ import annotations

import datetime as dt
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from pytest_ctxplat.catalog import load_model
from pytest_ctxplat.sim.hardware import load_hardware
from pytest_ctxplat.sim.roofline import RooflineTimingModel
from pytest_ctxplat.sim.timing import StepWork

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "calibrate_gpu.py"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("calibrate_gpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["calibrate_gpu"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_hf_config_reproduces_the_real_mlp_widths(script: ModuleType) -> None:
    assert script.hf_config(load_model("llama-3.1-8b"), 32)["intermediate_size"] == 14336
    assert script.hf_config(load_model("llama-3.1-70b"), 80)["intermediate_size"] == 28672
    cfg = script.hf_config(load_model("qwen3-32b"), 4)
    assert cfg["num_hidden_layers"] == 4 and cfg["num_key_value_heads"] == 8


def test_big_models_are_cut_to_fit_and_scaled_back(script: ModuleType) -> None:
    m70 = load_model("llama-3.1-70b")
    layers = script.layers_that_fit(m70, 80e9, kv_tokens=140_000)
    assert 1 <= layers < 80
    assert script.layers_that_fit(load_model("llama-3.1-8b"), 80e9, 140_000) == 32
    assert script.scale(0.01, m70, 20) == pytest.approx(0.04)


def test_written_file_loads_into_a_profile_and_changes_timing(script: ModuleType,
                                                              tmp_path: Path) -> None:
    decode = [{"batch": 1, "context": 1024, "seconds": 0.0075},
              {"batch": 32, "context": 4096, "seconds": 0.0140}]
    data = script.build_calibration(
        "NVIDIA H100 80GB HBM3", 798.0, 3.0, 55.0, 52.0,
        {"llama-3.1-8b": {"prefill": [{"tokens": 4096, "context": 0, "seconds": 0.2}],
                          "decode": decode}},
        now=dt.datetime(2026, 11, 23, tzinfo=dt.timezone.utc))
    assert data["date"].startswith("2026-11-23") and data["schema"] == "ctxplat-calibration/1"
    path = tmp_path / "cal.yaml"
    path.write_text(yaml.safe_dump(data))
    profile = load_hardware("h100-llama8b", {"calibration": str(path)})
    cal = RooflineTimingModel(profile)
    work = StepWork(decode_seqs=1, decode_context_tokens=1024)
    assert cal.step_time(work) == pytest.approx(0.0075, rel=0.02)
    assert profile.accelerator.host_link_gbs == 52.0
    with pytest.raises(Exception, match=r"matmul_tflops: must be > 0, got 0\.0"):
        script.build_calibration("x", 0.0, 3.0, 55.0, 52.0, {})


def test_main_refuses_without_a_gpu(script: ModuleType, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    try:
        import torch
        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    except ImportError:
        pass
    assert script.main(["--out", str(tmp_path / "c.yaml")]) == 2
    assert "calibrate_gpu:" in capsys.readouterr().err
