"""tools/profile_memory.py: the tensors alive at a run's peak, from onnxruntime's profile."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx.parser
import pytest

from onnxlrp.compiler import compile_explainer

pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

from profile_memory import alive_at_peak  # noqa: E402

from tests.compiler.test_recompute import DECODER  # noqa: E402


def test_the_peak_lists_what_is_alive_then():
    compiled = compile_explainer(onnx.parser.parse_model(DECODER), composite="attn_lrp", memory="low")
    tokens = 16
    x = np.random.default_rng(0).normal(size=(1, tokens, 8)).astype(np.float32)
    peaks = alive_at_peak(compiled.model, {"x": x, compiled.target_input: np.array([0])}, 1, compiled.logits)
    run, relevance = peaks["run"], peaks["relevance pass"]
    assert run[0] >= relevance[0] > 0
    for held, node, index, tensors in (run, relevance):
        assert held == sum(size for size, _ in tensors) and node and index >= 0
    assert any(size == tokens * tokens * 4 for size, _ in relevance[3])   # one head's scores
