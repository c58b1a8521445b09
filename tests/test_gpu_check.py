"""benchmarks/gpu_check.py runs end to end (here CPU against CPU: every check must pass)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow  # every check of the script: a dissection, attacks and training steps
def test_gpu_check_passes_cpu_against_cpu(capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.main(["--device", "cpu", "--size", "32", "--batch", "4", "--batches", "1"]) == 0
    out = capsys.readouterr().out
    assert "gpu check: passed" in out
    assert "0 of 512 units change concept" in out
    assert "full Broden, clean + FGSM 8/255, layer3 + layer4" in out
    assert "activations, time / bare forward" in out
    assert out.count("bf16") >= 2 and "training steps, resnet18" in out
