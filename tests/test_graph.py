"""onnxlrp/graph.py: the read-only index over a forward graph; its constants read from the proto when asked."""
from __future__ import annotations

import gc
import weakref

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxlrp.graph import ForwardGraph


def _graph() -> ForwardGraph:
    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4) - 5, "w")
    bias = numpy_helper.from_array(np.ones(4, np.float16), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Relu", ["z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [weight, bias])
    return ForwardGraph(helper.make_model(graph))


def test_constants_are_read_when_asked_and_not_kept():
    """A model's weights as numpy copies beside its proto would double a compile's memory: a constant's values are
    read when asked, kept while the caller holds them, and its shape and type come from the proto."""
    fwd = _graph()
    assert "w" in fwd.constants and "x" not in fwd.constants and sorted(fwd.constants) == ["b", "w"]
    assert fwd.input_names == ["x"]
    assert fwd.shape("w") == (3, 4) and fwd.elem_type("b") == TensorProto.FLOAT16
    assert fwd.constants._loaded.get("w") is None   # the shape did not read the values
    values = fwd.const("w")
    np.testing.assert_array_equal(values, np.arange(12).reshape(3, 4) - 5)
    assert fwd.const("w") is values   # held by the caller: the same array
    alive = weakref.ref(values)
    del values
    gc.collect()
    assert alive() is None
    assert not fwd.is_nonnegative("w") and fwd.is_nonnegative("y")


def test_set_constants_are_kept():
    """Values the compiler derives (a dequantized weight) are kept, and take the place of the proto's."""
    fwd = _graph()
    fwd.constants["w"] = np.zeros((3, 4), np.float64)
    fwd.constants["derived"] = np.ones(2)
    assert fwd.const("w").dtype == np.float64 and fwd.elem_type("w") == TensorProto.DOUBLE
    assert fwd.shape("derived") == (2,) and len(fwd.constants) == 3
    assert sorted(fwd.constants) == ["b", "derived", "w"]
