"""Slices that keep their whole input read as that input (onnxlrp/canonical/whole_slices.py): tiny models from
text over a sequence of any length, run before and after by onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest

from onnxlrp.canonical.shapes import symbolic_dims
from onnxlrp.canonical.whole_slices import skip_whole_slices

ort = pytest.importorskip("onnxruntime")

# a [S, S] table cut four ways: to the sequence's length (whole, as torch cuts a layer's mask to the key length),
# reversed (whole dims, other order), by step 2 and to a fixed 3 (not whole for S > 3)
MODEL = """
<ir_version: 9, opset_import: ["" : 17]>
cuts (float[S, 4] x) => (float[S, S] whole, float[S, S] reversed, float[M, S] halved, float[S, K] first3)
<int64[1] zero = {0}, int64[1] one = {1}, int64[1] big = {1000000}, int64[1] three = {3},
 int64[1] minus_one = {-1}, int64[1] minus_big = {-1000000}, int64[1] two = {2}, float scale = {3.0}>
{
    length = Shape <start = 0, end = 1> (x)
    xt = Transpose <perm = [1, 0]> (x)
    table = MatMul(x, xt)
    cut = Slice(table, zero, length, one)
    whole = Mul(cut, scale)
    flipped = Slice(table, minus_one, minus_big, one, minus_one)
    reversed = Mul(flipped, scale)
    halved = Slice(table, zero, big, zero, two)
    first3 = Slice(table, zero, three, one)
}
"""


def _model() -> onnx.ModelProto:
    return onnx.parser.parse_model(MODEL)


def test_a_whole_slice_is_read_as_its_input_and_the_others_stay():
    model = _model()
    rewritten = skip_whole_slices(_model(), symbolic_dims(model))
    slices = [n for n in rewritten.graph.node if n.op_type == "Slice"]
    assert len(slices) == 3 and "cut" not in {n.output[0] for n in slices}
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(rewritten.SerializeToString(), providers=["CPUExecutionProvider"])
    for length in (2, 5, 9):
        x = np.random.default_rng(length).normal(size=(length, 4)).astype(np.float32)
        for got, expected in zip(after.run(None, {"x": x}), before.run(None, {"x": x})):
            np.testing.assert_array_equal(got, expected)


def test_without_symbolic_dims_nothing_changes():
    model = _model()
    assert skip_whole_slices(model, {}) is model and sum(n.op_type == "Slice" for n in model.graph.node) == 4


def test_a_slice_with_other_steps_stays_even_with_the_whole_dims():
    """The reversed Slice has its input's dims (symbolic inference writes 999999 for them, so the dims are
    given here as they are): only steps of 1 make a Slice with whole dims the whole tensor."""
    dims = dict(symbolic_dims(_model()), flipped=["S", "S"])
    rewritten = skip_whole_slices(_model(), dims)
    assert {n.output[0] for n in rewritten.graph.node if n.op_type == "Slice"} == {"flipped", "halved", "first3"}
