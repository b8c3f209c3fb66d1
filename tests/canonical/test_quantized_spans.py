"""Layers on integer activations put into float-ended spans (onnxlrp/canonical/quantized.py): tiny models from
text, run before and after the rewrite by onnxruntime, every output bit for bit."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest

from onnxlrp.canonical.quantized import SPAN_DOMAIN, quantized_spans

ort = pytest.importorskip("onnxruntime")

# two dynamically quantized layers sharing one DynamicQuantizeLinear (as quantize_dynamic writes Q/K/V), the
# first with its bias Add
DYNAMIC = """
<ir_version: 9, opset_import: ["" : 17]>
dynamic (float[N, 6] x) => (float[N, 4] y, float[N, 4] z)
<int8[6, 4] w = {1, -2, 3, -4, 5, -6, 7, -8, 9, -10, 11, -12, 13, -14, 15, -16, 17, -18, 19, -20, 21, -22, 23, -24},
 int8 w_zero = {0}, float w_scale = {0.05}, float[4] bias = {0.1, -0.2, 0.3, -0.4}>
{
    xq, xs, xz = DynamicQuantizeLinear(x)
    scale = Mul(xs, w_scale)
    acc = MatMulInteger(xq, w, xz, w_zero)
    accf = Cast<to = 1>(acc)
    h = Mul(accf, scale)
    y = Add(h, bias)
    scale2 = Mul(xs, w_scale)
    acc2 = MatMulInteger(xq, w, xz, w_zero)
    acc2f = Cast<to = 1>(acc2)
    z = Mul(acc2f, scale2)
}
"""

# QOperator: quantize, a matrix product, an op that only moves integers, x + x, dequantize
QOPERATOR = """
<ir_version: 9, opset_import: ["" : 17, "com.microsoft" : 1]>
qoperator (float[N, 6] x) => (float[N, 2, 2] y)
<float xs = {0.02}, uint8 xz = {128}, int8[6, 4] w = {1, -2, 3, -4, 5, -6, 7, -8, 9, -10, 11, -12, 13, -14, 15, -16,
 17, -18, 19, -20, 21, -22, 23, -24}, float ws = {0.01}, int8 wz = {0}, float hs = {0.003}, uint8 hz = {0},
 float ys = {0.005}, uint8 yz = {3}, int64[3] shape = {0, 2, 2}>
{
    xq = QuantizeLinear(x, xs, xz)
    hq = QLinearMatMul(xq, xs, xz, w, ws, wz, hs, hz)
    rq = Reshape(hq, shape)
    yq = com.microsoft.QLinearAdd(rq, hs, hz, rq, hs, hz, ys, yz)
    y = DequantizeLinear(yq, ys, yz)
}
"""


# the second product reads the first one's integers on another grid than they were written on
REGRID = """
<ir_version: 9, opset_import: ["" : 17]>
regrid (float[N, 6] x) => (float[N, 4] y)
<float xs = {0.02}, uint8 xz = {128}, int8[6, 4] w = {1, -2, 3, -4, 5, -6, 7, -8, 9, -10, 11, -12, 13, -14, 15, -16,
 17, -18, 19, -20, 21, -22, 23, -24}, float ws = {0.01}, int8 wz = {0}, float hs = {0.003}, uint8 hz = {100},
 float gs = {0.004}, uint8 gz = {90}, int8[4, 4] v = {3, -1, 2, 5, -4, 6, 1, -2, 7, 2, -3, 1, -1, 4, 2, -5},
 float vs = {0.02}, int8 vz = {0}, float ys = {0.005}, uint8 yz = {128}>
{
    xq = QuantizeLinear(x, xs, xz)
    hq = QLinearMatMul(xq, xs, xz, w, ws, wz, hs, hz)
    yq = QLinearMatMul(hq, gs, gz, v, vs, vz, ys, yz)
    y = DequantizeLinear(yq, ys, yz)
}
"""


def _outputs(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


@pytest.mark.parametrize("text", [DYNAMIC, QOPERATOR, REGRID], ids=["dynamic", "qoperator", "regrid"])
def test_spans_compute_the_models_own_outputs(text):
    model = onnx.parser.parse_model(text)
    spans = quantized_spans(model)
    onnx.checker.check_model(spans)
    calls = [n for n in spans.graph.node if n.domain == SPAN_DOMAIN]
    assert len(calls) == 2 and len(spans.functions) == 2
    for x in np.random.default_rng(0).normal(size=(3, 5, 6)).astype(np.float32):
        for want, got in zip(_outputs(model, x), _outputs(spans, x)):
            np.testing.assert_array_equal(got, want)


def test_integer_only_ops_between_spans_run_on_the_floats():
    spans = quantized_spans(onnx.parser.parse_model(QOPERATOR))
    types = {n.op_type for n in spans.graph.node}
    assert "Reshape" in types and "QuantizeLinear" in types    # the input's QuantizeLinear stays (a QDQ pair)
    reshape = next(n for n in spans.graph.node if n.op_type == "Reshape")
    assert reshape.input[0].endswith("__float")
    # the final DequantizeLinear reads the span's float output instead
    assert not any(n.op_type == "DequantizeLinear" and n.input[0] == "yq" for n in spans.graph.node)


def test_a_model_without_integer_layers_is_left_alone():
    model = onnx.parser.parse_model("""
    <ir_version: 9, opset_import: ["" : 17]>
    plain (float[N, 2] x) => (float[N, 2] y) { y = Relu(x) }""")
    assert quantized_spans(model) is model
