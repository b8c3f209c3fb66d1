"""The explained row (onnxlrp/compiler/row.py): a sequence output's vocabulary projection sends relevance from
the explained row alone, with the same numbers as the whole [batch, seq, vocab] product."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest

import onnxlrp.compiler as compiler
from onnxlrp import Explainer

ort = pytest.importorskip("onnxruntime")

SEQ, VOCAB = 7, 6
W1 = np.random.default_rng(1).normal(size=(4, 5)).round(2).astype(np.float32)
W2 = np.random.default_rng(2).normal(size=(5, VOCAB)).round(2).astype(np.float32)


def _text(values: np.ndarray) -> str:
    return ", ".join(f"{v:.2f}" for v in values.ravel())


# per position: a = relu(x W1), logits = a W2
PER_POSITION = f"""
<ir_version: 9, opset_import: ["" : 17]>
per_position (float[N, {SEQ}, 4] x) => (float[N, {SEQ}, {VOCAB}] logits)
<float[4, 5] w1 = {{{_text(W1)}}}, float[5, {VOCAB}] w2 = {{{_text(W2)}}}>
{{
    h = MatMul(x, w1)
    a = Relu(h)
    logits = MatMul(a, w2)
}}
"""

# the same, with the positions mixed (a causal running sum) and the logits gated by a sigmoid of the input: the
# gate varies along the positions, so its row at the explained position is taken
GATED = f"""
<ir_version: 9, opset_import: ["" : 17]>
gated (float[N, {SEQ}, 4] x) => (float[N, {SEQ}, {VOCAB}] logits)
<float[4, 5] w1 = {{{_text(W1)}}}, float[5, {VOCAB}] w2 = {{{_text(W2)}}}, float[4, {VOCAB}] w3 = {{{_text(W1 @ W2)}}},
 float[{SEQ}, {SEQ}] causal = {{{_text(np.tril(np.ones((SEQ, SEQ))))}}}>
{{
    h = MatMul(x, w1)
    a = Relu(h)
    mixed = MatMul(causal, a)
    t = MatMul(mixed, w2)
    g = MatMul(x, w3)
    gate = Sigmoid(g)
    logits = Mul(t, gate)
}}
"""

# a dense layer as a Gemm between flattening Reshapes (as some exporters write one)
GEMM = f"""
<ir_version: 9, opset_import: ["" : 17]>
gemm (float[N, {SEQ}, 4] x) => (float[N, {SEQ}, {VOCAB}] logits)
<float[4, 5] w1 = {{{_text(W1)}}}, float[{VOCAB}, 5] w2t = {{{_text(W2.T)}}}, int64[2] flat = {{-1, 5}},
 int64[3] back = {{-1, {SEQ}, {VOCAB}}}>
{{
    h = MatMul(x, w1)
    a = Relu(h)
    rows = Reshape(a, flat)
    z = Gemm(rows, w2t) <transB = 1>
    logits = Reshape(z, back)
}}
"""

# the logits through a Transpose the pass does not follow: the row is not taken, the numbers stay
TRANSPOSED = f"""
<ir_version: 9, opset_import: ["" : 17]>
transposed (float[N, {SEQ}, 4] x) => (float[N, {SEQ}, {VOCAB}] logits)
<float[4, 5] w1 = {{{_text(W1)}}}, float[{VOCAB}, 5] w2t = {{{_text(W2.T)}}}>
{{
    h = MatMul(x, w1)
    a = Relu(h)
    at = Transpose(a) <perm = [0, 2, 1]>
    zt = MatMul(w2t, at)
    logits = Transpose(zt) <perm = [0, 2, 1]>
}}
"""


def _x(batch: int = 2) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(batch, SEQ, 4)).astype(np.float32)


def _stab(u: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    return u + eps * np.where(u >= 0, 1.0, -1.0)


def test_epsilon_relevance_at_the_explained_position_follows_the_rule():
    """docs/rules.md, Epsilon: R_x = x * W^T [R / stab(W x)], from R = z_c at (position, c) only: numpy from the
    formula, every sample at its own position and target."""
    x = _x()
    positions, targets = np.array([-1, 2]), np.array([-1, 3])
    result = Explainer(onnx.parser.parse_model(PER_POSITION), composite="epsilon").explain(
        x, target=targets, position=positions)
    h = x.astype(np.float64) @ W1
    a = np.maximum(h, 0)
    z = a @ W2
    for n, (p, c) in enumerate(zip(positions % SEQ, targets)):
        c = int(np.argmax(z[n, p])) if c < 0 else c
        r = np.zeros(VOCAB)
        r[c] = z[n, p, c]
        r_a = a[n, p] * (W2 @ (r / _stab(z[n, p])))
        expected = np.zeros((SEQ, 4))
        expected[p] = x[n, p] * (W1 @ (r_a / _stab(h[n, p])))
        np.testing.assert_allclose(result.relevance[n], expected, rtol=1e-5, atol=1e-7)


def _without_the_pass(monkeypatch):
    monkeypatch.setattr(compiler, "compute_on_row", lambda nodes, *args: nodes)


def _explain(model_text, composite, mode, memory, x, positions):
    explainer = Explainer(onnx.parser.parse_model(model_text), composite=composite, memory=memory)
    return explainer.explain(x, target=np.array([-1, 4]), position=positions, mode=mode).relevance


@pytest.mark.parametrize("model_text", [PER_POSITION, GATED, GEMM, TRANSPOSED], ids=["per_position", "gated",
                                                                                      "gemm", "transposed"])
@pytest.mark.parametrize("composite, mode, memory", [("epsilon", "logit", "default"), ("attn_lrp", "logit", "low"),
                                                     ("cp_lrp", "prob", "default"),
                                                     ("attn_lrp", "mean_contrast", "default")])
def test_the_same_relevance_as_the_whole_product(model_text, composite, mode, memory, monkeypatch):
    x, positions = _x(), np.array([-1, 3])
    on_row = _explain(model_text, composite, mode, memory, x, positions)
    _without_the_pass(monkeypatch)
    whole = _explain(model_text, composite, mode, memory, x, positions)
    assert np.abs(whole).sum() > 0
    np.testing.assert_allclose(on_row, whole, rtol=1e-6, atol=1e-9)


def _relevance_products_with_the_vocabulary(model_text, composite, mode) -> list[tuple]:
    """The shapes, in a run, of what the relevance pass multiplies with the vocabulary projection's weight."""
    explainer = compiler.compile_explainer(onnx.parser.parse_model(model_text), composite=composite, mode=mode).model
    weights = {t.name for t in explainer.graph.initializer if sorted(t.dims) == [5, VOCAB]}
    operands = [n.input[0] for n in explainer.graph.node
                if n.name.startswith("lrp/") and n.op_type in ("MatMul", "Gemm") and n.input[1] in weights]
    explainer.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in operands)
    session = ort.InferenceSession(explainer.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"x": _x(), "target": np.array([-1, 4]), "position": np.array([-1, 3])}
    return [value.shape for value in session.run(operands, feeds)]


@pytest.mark.parametrize("model_text", [PER_POSITION, GATED, GEMM], ids=["per_position", "gated", "gemm"])
@pytest.mark.parametrize("composite, mode", [("epsilon", "logit"), ("attn_lrp", "logit"), ("cp_lrp", "prob")])
def test_the_vocabulary_projection_takes_one_row_per_sample(model_text, composite, mode, monkeypatch):
    assert _relevance_products_with_the_vocabulary(model_text, composite, mode) == [(2, VOCAB)]
    _without_the_pass(monkeypatch)   # the whole [batch * seq, vocab] product, as the walk emits it
    assert _relevance_products_with_the_vocabulary(model_text, composite, mode) in ([(2 * SEQ, VOCAB)],
                                                                                    [(2, SEQ, VOCAB)])
