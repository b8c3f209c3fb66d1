"""Outputs respect the user's umask: files 0644 and folders 0755 under umask 022 (what open() and mkdir
give), though every write goes through a private temporary file or folder first."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from onnxlrp.cli import main


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _modes(folder: Path) -> dict[str, int]:
    modes = {str(folder): stat.S_IMODE(folder.stat().st_mode)}
    for path in folder.rglob("*"):
        modes[str(path)] = stat.S_IMODE(path.stat().st_mode)
    return modes


def _check(folder: Path) -> None:
    wrong = {p: oct(m) for p, m in _modes(folder).items()
             if m != (0o755 if Path(p).is_dir() else 0o644)}
    assert not wrong, wrong


def test_every_command_writes_readable_outputs(umask_022, tmp_path, models_dir):
    model, image = str(models_dir / "tiny_vgg.onnx"), str(models_dir / "example.png")
    assert main(["compile", model, "-o", str(tmp_path / "compiled" / "m.lrp.onnx")]) == 0
    assert main(["compile", model, "-o", str(tmp_path / "external" / "m.lrp.onnx"), "--external-data"]) == 0
    assert main(["explain", model, image, "--out", str(tmp_path / "heat"), "--quiet"]) == 0
    assert main(["explain", model, image, "--top-k", "2", "--out", str(tmp_path / "topk"), "--quiet"]) == 0
    assert main(["export", model, "--format", "triton", "--out", str(tmp_path / "triton")]) == 0
    pytest.importorskip("mlflow")
    assert main(["export", model, "--format", "mlflow", "--out", str(tmp_path / "mlflow")]) == 0
    assert main(["concepts", model, image, "--layer", "conv_13", "--top", "2", "--out", str(tmp_path / "c")]) == 0
    assert main(["concepts", model, image, "--layer", "conv_13", "--references", "1", "--out", str(tmp_path / "a"),
                 "--quiet"]) == 0
    for folder in ("compiled", "external", "heat", "topk", "triton", "mlflow", "c", "a"):
        _check(tmp_path / folder)


def test_a_stricter_umask_is_respected(tmp_path, models_dir):
    old = os.umask(0o077)
    try:
        assert main(["compile", str(models_dir / "tiny_vgg.onnx"), "-o", str(tmp_path / "m.lrp.onnx")]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.lrp.onnx").stat().st_mode) == 0o600
