"""Attention split per head for the bounded-memory explainer (onnxlrp/canonical/heads.py): tiny models from text,
run before and after the rewrite by onnxruntime, outputs bit for bit; patterns that must stay whole."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest

from onnxlrp import Explainer
from onnxlrp.canonical.heads import split_attention_heads
from onnxlrp.compiler import compile_explainer
from onnxlrp.compiler.recompute import RECOMPUTED

ort = pytest.importorskip("onnxruntime")
RNG = np.random.default_rng(0)


def _values(*shape) -> str:
    return ", ".join(f"{v:.3f}" for v in RNG.normal(size=shape).ravel() * 0.5)


CAUSAL = ", ".join("0.0" if k <= q else "-1e9" for q in range(6) for k in range(6))
WEIGHTS = (f"float[8, 8] wq = {{{_values(8, 8)}}}, float[8, 8] wk = {{{_values(8, 8)}}}, "
           f"float[8, 8] wv = {{{_values(8, 8)}}}, float[8, 8] wo = {{{_values(8, 8)}}}, "
           f"float[8, 3] w2 = {{{_values(8, 3)}}}")


def _attention(normalise: str = "p = Softmax <axis = -1> (masked)\n    pc = Cast <to = 1> (p)",
               probabilities: str = "pc") -> str:
    """Two heads of width 4 over 6 tokens, as torch.onnx writes a decoder's: scale, causal mask, Softmax, Cast,
    then a residual join and a pooled classifier."""
    return f"""
<ir_version: 9, opset_import: ["" : 17]>
attention (float[N, 6, 8] x) => (float[N, 3] logits)
<{WEIGHTS}, int64[4] heads = {{0, 6, 2, 4}}, int64[3] merged = {{0, 6, 8}}, float half = {{0.5}},
 float[1, 1, 6, 6] mask = {{{CAUSAL}}}>
{{
    q = MatMul(x, wq)
    k = MatMul(x, wk)
    v = MatMul(x, wv)
    qh = Reshape(q, heads)
    kh = Reshape(k, heads)
    vh = Reshape(v, heads)
    qt = Transpose <perm = [0, 2, 1, 3]> (qh)
    kt = Transpose <perm = [0, 2, 3, 1]> (kh)
    vt = Transpose <perm = [0, 2, 1, 3]> (vh)
    scores = MatMul(qt, kt)
    scaled = Mul(scores, half)
    masked = Add(scaled, mask)
    {normalise}
    o = MatMul({probabilities}, vt)
    ot = Transpose <perm = [0, 2, 1, 3]> (o)
    om = Reshape(ot, merged)
    out = MatMul(om, wo)
    r = Add(x, out)
    pooled = ReduceMean <axes = [1], keepdims = 0> (r)
    logits = MatMul(pooled, w2)
}}
"""


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_each_head_computes_what_the_batched_attention_computed():
    model = onnx.parser.parse_model(_attention())
    split, splits = split_attention_heads(model)
    assert len(splits) == 1 and len(splits[0].splits) == 3
    ops = [n.op_type for n in split.graph.node]
    assert ops.count("Softmax") == 2 and ops.count("Cast") == 2 and ops.count("Split") == 3   # Q, K^T, V
    assert ops.count("Concat") == 1
    x = RNG.normal(size=(3, 6, 8)).astype(np.float32)
    np.testing.assert_array_equal(_run(split, x), _run(model, x))


@pytest.mark.parametrize("why, normalise, probabilities", [
    ("a softmax over the heads", "p = Softmax <axis = 1> (masked)", "p"),
    ("probabilities read twice", "p = Softmax <axis = -1> (masked)\n    pc = Add(p, p)", "pc"),
])
def test_what_is_not_an_attention_stays_whole(why, normalise, probabilities):
    model = onnx.parser.parse_model(_attention(normalise, probabilities))
    split, splits = split_attention_heads(model)
    assert split is model and not splits, why


def test_an_attention_whose_head_count_is_unknown_stays_whole():
    """An op onnxruntime's symbolic shape inference does not know upstream of Q: no head count, no split."""
    text = _attention().replace('opset_import: ["" : 17]', 'opset_import: ["" : 17, "custom" : 1]')
    model = onnx.parser.parse_model(text.replace("q = MatMul(x, wq)", "p0 = MatMul(x, wq)\n    q = custom.Mystery(p0)"))
    split, splits = split_attention_heads(model)
    assert split is model and not splits


def test_without_sympy_nothing_is_split_and_the_low_form_still_explains(tmp_path):
    """onnxruntime's symbolic shape inference needs sympy (a dependency of onnxlrp, but not of onnxruntime): where
    it is missing, onnxlrp still imports and the low form explains, with the attention whole."""
    import subprocess
    import sys
    path = tmp_path / "attention.onnx"
    onnx.save(onnx.parser.parse_model(_attention()), path)
    script = (f"import sys; sys.modules['sympy'] = None\n"
              f"import numpy as np\nfrom onnxlrp import Explainer\n"
              f"from onnxlrp.compiler import compile_explainer\n"
              f"compiled = compile_explainer({str(path)!r}, composite='attn_lrp', memory='low')\n"
              f"print(sum(n.op_type == 'Softmax' and not n.name.startswith('lrp/') and 'recomputed' not in n.name\n"
              f"          for n in compiled.model.graph.node))\n"
              f"x = np.ones((1, 6, 8), np.float32)\n"
              f"low = Explainer({str(path)!r}, composite='attn_lrp', memory='low')\n"
              f"print(np.isfinite(low.explain(x).relevance).all())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "True"]


def test_the_low_memory_form_explains_the_split_attention_as_the_default_form():
    """memory="low" splits the heads, the default form does not: the same logits and relevance."""
    model = onnx.parser.parse_model(_attention())
    x = RNG.normal(size=(2, 6, 8)).astype(np.float32)
    for memory, softmaxes in (("low", 2), ("default", 1)):
        compiled = compile_explainer(model, composite="attn_lrp", memory=memory)
        forward = [n for n in compiled.model.graph.node if not n.name.startswith("lrp/")
                   and not n.name.endswith(RECOMPUTED)]
        assert sum(n.op_type == "Softmax" for n in forward) == softmaxes, memory
    a, b = (Explainer(model, composite="attn_lrp", memory=memory).explain(x) for memory in ("low", "default"))
    np.testing.assert_array_equal(a.outputs[0], b.outputs[0])
    np.testing.assert_allclose(a.relevance, b.relevance, rtol=1e-6, atol=1e-7 * np.abs(b.relevance).max())
