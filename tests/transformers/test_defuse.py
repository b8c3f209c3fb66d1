"""onnxruntime's fused com.microsoft ops, de-fused into standard ops, compute what onnxruntime computes."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxlrp import Explainer
from onnxlrp.errors import OnnxLrpError
from onnxlrp.canonical.defuse import defuse_contrib_ops

B, S, H, HEADS = 2, 5, 8, 2


def _model(node, inputs, weights, outputs=("y",), output_shapes=None):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in weights(rng).items()]
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                     for o in outputs], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def _x(name="x", shape=(B, S, H)):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _f(rng, *shape):
    return rng.normal(size=shape).astype(np.float32)


CASES = {
    "SkipLayerNormalization": lambda: _model(
        helper.make_node("SkipLayerNormalization", ["x", "skip", "g", "b", "bias"], ["y"], domain="com.microsoft",
                         epsilon=1e-5), [_x(), _x("skip")],
        lambda r: {"g": _f(r, H), "b": _f(r, H), "bias": _f(r, H)}),
    "SkipSimplifiedLayerNormalization": lambda: _model(
        helper.make_node("SkipSimplifiedLayerNormalization", ["x", "skip", "g"], ["y"], domain="com.microsoft",
                         epsilon=1e-5), [_x(), _x("skip")], lambda r: {"g": _f(r, H)}),
    "SimplifiedLayerNormalization": lambda: _model(
        helper.make_node("SimplifiedLayerNormalization", ["x", "g"], ["y"], domain="", epsilon=1e-5, axis=-1),
        [_x()], lambda r: {"g": _f(r, H)}),
    "BiasGelu": lambda: _model(helper.make_node("BiasGelu", ["x", "bias"], ["y"], domain="com.microsoft"), [_x()],
                               lambda r: {"bias": _f(r, H)}),
    "FastGelu": lambda: _model(helper.make_node("FastGelu", ["x", "bias"], ["y"], domain="com.microsoft"), [_x()],
                               lambda r: {"bias": _f(r, H)}),
    "Gelu": lambda: _model(helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft"), [_x()], lambda r: {}),
    "QuickGelu": lambda: _model(helper.make_node("QuickGelu", ["x"], ["y"], domain="com.microsoft", alpha=1.5),
                                [_x()], lambda r: {}),
    "FusedMatMul": lambda: _model(helper.make_node("FusedMatMul", ["x", "w"], ["y"], domain="com.microsoft",
                                                   transB=1, alpha=0.5), [_x()], lambda r: {"w": _f(r, 3, H)}),
    "Attention": lambda: _model(
        helper.make_node("Attention", ["x", "w", "bias", "mask"], ["y"], domain="com.microsoft", num_heads=HEADS),
        [_x(), helper.make_tensor_value_info("mask", TensorProto.INT32, [B, S])],
        lambda r: {"w": _f(r, H, 3 * H), "bias": _f(r, 3 * H)}),
    "Attention_causal": lambda: _model(
        helper.make_node("Attention", ["x", "w", "bias"], ["y"], domain="com.microsoft", num_heads=HEADS,
                         unidirectional=1), [_x()], lambda r: {"w": _f(r, H, 3 * H), "bias": _f(r, 3 * H)}),
    "MultiHeadAttention": lambda: _model(
        helper.make_node("MultiHeadAttention", ["x", "k", "v", "bias"], ["y"], domain="com.microsoft",
                         num_heads=HEADS), [_x(), _x("k"), _x("v")], lambda r: {"bias": _f(r, 3 * H)}),
    "EmbedLayerNormalization": lambda: _model(
        helper.make_node("EmbedLayerNormalization", ["ids", "segments", "word", "pos", "seg", "g", "b", "mask"],
                         ["y", "mask_index"], domain="com.microsoft", epsilon=1e-5),
        [helper.make_tensor_value_info(n, TensorProto.INT32, [B, S]) for n in ("ids", "segments", "mask")],
        lambda r: {"word": _f(r, 11, H), "pos": _f(r, 16, H), "seg": _f(r, 2, H), "g": _f(r, H), "b": _f(r, H)},
        outputs=("y",)),
}
CASES["SimplifiedLayerNormalization"] = lambda: _model(  # an ai.onnx-domain op only onnxruntime defines
    helper.make_node("SimplifiedLayerNormalization", ["x", "g"], ["y"], epsilon=1e-5, axis=-1), [_x()],
    lambda r: {"g": _f(r, H)})


def _feeds(model):
    rng = np.random.default_rng(1)
    feeds = {}
    for value in model.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.type.tensor_type.elem_type == TensorProto.INT32:
            feeds[value.name] = rng.integers(0, 2 if value.name != "ids" else 11, size=shape).astype(np.int32)
            if value.name == "mask":
                feeds[value.name][:, :2] = 1
        else:
            feeds[value.name] = rng.normal(size=shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize("case", sorted(CASES))
def test_defused_op_computes_what_onnxruntime_computes(case):
    model = CASES[case]()
    feeds = _feeds(model)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    defused = defuse_contrib_ops(copy)
    assert not any(n.domain == "com.microsoft" for n in defused.graph.node)
    if case == "SimplifiedLayerNormalization":
        assert not any(n.op_type == "SimplifiedLayerNormalization" for n in defused.graph.node)
    got = ort.InferenceSession(defused.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-5)


def test_an_op_that_cannot_be_defused_is_a_clear_error():
    node = helper.make_node("GroupQueryAttention", ["x"], ["y"], domain="com.microsoft", name="gqa")
    model = _model(node, [_x()], lambda r: {})
    with pytest.raises(OnnxLrpError, match="GroupQueryAttention.*gqa"):
        Explainer(model, composite="attn_lrp").compiled()
