"""onnxlrp/canonical/shapes.py: onnxruntime's symbolic shape inference, used for the dims of computed reshapes."""
from __future__ import annotations

import onnx.parser
import pytest

from onnxlrp.canonical.shapes import symbolic_dims

pytest.importorskip("sympy")

# the second dim through a computed reshape: ONNX's own inference leaves it unknown, the symbolic one follows it
COMPUTED_RESHAPE = """
<ir_version: 9, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 2, 2] y)
<int64[1] two = {2}>
{
    lead = Shape <end = 1> (x)
    target = Concat <axis = 0> (lead, two, two)
    y = Reshape(x, target)
}
"""

# an op from a domain nobody knows: some shapes stay unknown
UNKNOWN_OP = """
<ir_version: 9, opset_import: ["" : 17, "custom" : 1]>
g (float[N, 4] x) => (float[N, 4] y)
{
    t = custom.Foo(x)
    y = Relu(t)
}
"""


def test_dims_through_a_computed_reshape():
    assert symbolic_dims(onnx.parser.parse_model(COMPUTED_RESHAPE))["y"] == ["N", 2, 2]


def test_an_incomplete_inference_gives_no_dims_and_writes_no_file(tmp_path, monkeypatch):
    """onnxruntime's infer_shapes writes sym_shape_infer_temp.onnx into the current folder when some shape stays
    unknown: onnxlrp must leave the user's folder as it was."""
    monkeypatch.chdir(tmp_path)
    assert symbolic_dims(onnx.parser.parse_model(UNKNOWN_OP)) == {}
    assert list(tmp_path.iterdir()) == []
