"""The GPU tools run anywhere as a check of themselves: on the CPU provider, every node is where asked and
the relevance agrees with itself. (On a GPU they are run by hand: docs/performance.md, "GPU".)"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import gpu_check  # noqa: E402
import gpu_parity  # noqa: E402


def test_gpu_check_on_the_cpu_provider_finds_no_fallback(models_dir, capsys):
    assert gpu_check.main([str(models_dir / "tiny_resnet.onnx"), "--provider", "CPUExecutionProvider"]) == 0
    assert "on CPUExecutionProvider" in capsys.readouterr().out


def test_gpu_parity_compares_each_setup_with_the_cpu(models_dir, monkeypatch, capsys):
    cpu = ["CPUExecutionProvider"]
    monkeypatch.setattr(gpu_parity, "SETUPS", {"cpu": cpu, "cuda": cpu, "cuda-tf32": cpu})
    monkeypatch.setattr(gpu_check.ort, "get_available_providers", lambda: ["CUDAExecutionProvider"] + cpu)
    assert gpu_parity.main([str(models_dir / "tiny_resnet.onnx"), "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "CUDA 0.0e+00" in out and out.count("relative L2") == 2


def test_gpu_parity_without_cuda_says_what_to_install(models_dir, monkeypatch):
    monkeypatch.setattr(gpu_check.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(SystemExit, match="onnxruntime-gpu"):
        gpu_parity.main([str(models_dir / "tiny_resnet.onnx")])
