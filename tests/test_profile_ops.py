"""tools/profile_ops.py: kernel time per op type of one run, for an image model and for a decoder's two forms."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import profile_ops  # noqa: E402


def tables(text: str) -> dict[str, dict[str, int]]:
    """{heading: {op type: node count}} of what the tool printed."""
    found, current = {}, None
    for line in text.splitlines():
        if heading := re.match(r"^(.+): [\d.]+ ms$", line):
            current = found.setdefault(heading.group(1), {})
        elif (row := re.match(r"^\| (\w+) \| [\d.]+ \| (\d+) \|$", line)) and current is not None:
            current[row.group(1)] = int(row.group(2))
    return found


def test_image_model_and_its_inference(models_dir, capsys):
    profile_ops.main([str(models_dir / "tiny_resnet.onnx"), "--inference", "--top", "50"])
    found = tables(capsys.readouterr().out)
    assert set(found) == {"inference", "epsilon_plus_flat"}
    assert found["epsilon_plus_flat"]["Conv"] > found["inference"]["Conv"]   # the relevance pass's convolutions


def test_model_or_arch_one_of_the_two(capsys):
    with pytest.raises(SystemExit):
        profile_ops.main([])
    assert "one of the two" in capsys.readouterr().err


@pytest.mark.slow
def test_decoder_in_both_forms(capsys):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    profile_ops.main(["--arch", "llama", "--tokens", "12", "--composite", "attn_lrp", "--memory", "default", "low",
                      "--top", "100"])
    found = tables(capsys.readouterr().out)
    assert set(found) == {"attn_lrp, memory default", "attn_lrp, memory low"}
    # the low form computes each head's attention apart: one Softmax per head (4) and layer (2)
    assert found["attn_lrp, memory default"]["Softmax"] == 2
    assert found["attn_lrp, memory low"]["Softmax"] >= 8
