"""onnxlrp/canonical/shapes.py: onnxruntime's symbolic shape inference, used for the dims of computed reshapes;
a rewritten graph exported back to a model."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import onnx.parser
import onnx_graphsurgeon as gs
import pytest
from onnx import numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxlrp.canonical.shapes import exported, outer_reads, rename_outer_reads, symbolic_dims

needs_sympy = pytest.mark.skipif(__import__("importlib").util.find_spec("sympy") is None, reason="needs sympy")

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


@needs_sympy
def test_dims_through_a_computed_reshape():
    assert symbolic_dims(onnx.parser.parse_model(COMPUTED_RESHAPE))["y"] == ["N", 2, 2]


@needs_sympy
def test_an_incomplete_inference_gives_no_dims_and_writes_no_file(tmp_path, monkeypatch):
    """onnxruntime's infer_shapes writes sym_shape_infer_temp.onnx into the current folder when some shape stays
    unknown: onnxlrp must leave the user's folder as it was."""
    monkeypatch.chdir(tmp_path)
    assert symbolic_dims(onnx.parser.parse_model(UNKNOWN_OP)) == {}
    assert list(tmp_path.iterdir()) == []


# two dense layers: w1 is rewritten (a new array), w2 stays as imported (lazy), b is small
DENSE = """
<ir_version: 9, opset_import: ["" : 17]>
g (float[N, 64] x) => (float[N, 64] y)
<float[64] b = {0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5}>
{
    h = MatMul(x, w1)
    z = MatMul(h, w2)
    y = Add(z, b)
}
"""


def _dense_model() -> onnx.ModelProto:
    model = onnx.parser.parse_model(DENSE)
    rng = np.random.default_rng(0)
    model.graph.initializer.extend(numpy_helper.from_array(rng.normal(size=(64, 64)).astype(np.float32), name)
                                   for name in ("w1", "w2"))
    return model


def test_exported_writes_the_weights_the_graph_holds_and_lets_rewritten_arrays_go():
    """The model is the one graphsurgeon's export writes; afterwards the graph's weights read the exported copy, so
    that a rewritten weight's array (an LLM's GBs in all) is not held beside it."""
    graph = gs.import_onnx(_dense_model())
    w1 = graph.tensors()["w1"]
    rewritten = np.ascontiguousarray(w1.values.T)
    w1.values = rewritten
    alive = weakref.ref(rewritten)
    expected = gs.export_onnx(graph, do_type_check=False)
    del rewritten
    model = exported(graph, 9)
    written = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert written.keys() == {t.name for t in expected.graph.initializer}
    for tensor in expected.graph.initializer:
        np.testing.assert_array_equal(written[tensor.name], numpy_helper.to_array(tensor))
    assert [n.op_type for n in model.graph.node] == [n.op_type for n in expected.graph.node]
    slots = {t.name: t for t in model.graph.initializer}
    for name in ("w1", "w2"):   # the weights over the inline size
        values = graph.tensors()[name]._values
        assert isinstance(values, LazyValues) and values.tensor.raw_data == slots[name].raw_data
    gc.collect()
    assert alive() is None
    np.testing.assert_array_equal(graph.tensors()["w1"].values, written["w1"])   # the graph still reads it


def test_exported_fills_the_copies_of_an_outer_weight_in_a_branch():
    """graphsurgeon writes an outer weight that a branch reads into the branch as well: that copy holds the weight
    too (it was left empty, and folding the If later would have inlined an empty weight)."""
    from onnx import TensorProto, helper
    weight = numpy_helper.from_array(np.arange(64 * 64, dtype=np.float32).reshape(64, 64), "w")
    then_branch = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["t"])], "then", [],
                                    [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                                    [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64]),
                                           helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 64]),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    model = exported(gs.import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])), 9)
    branch = next(a.g for a in model.graph.node[1].attribute if a.name == "then_branch")
    copies = [t for t in branch.initializer if t.name == "w"]
    assert copies and all(np.array_equal(numpy_helper.to_array(t), numpy_helper.to_array(weight)) for t in copies)


def _loop_reading(outer: str) -> onnx.NodeProto:
    """A Loop whose body adds the outer-scope `outer` to its carried value, through a nested If that reads it too."""
    helper, f = onnx.helper, onnx.TensorProto.FLOAT
    branch = helper.make_graph([helper.make_node("Identity", [outer], ["picked"])], "branch", [],
                               [helper.make_tensor_value_info("picked", f, None)])
    body = helper.make_graph(
        [helper.make_node("If", ["cond"], ["chosen"], then_branch=branch, else_branch=branch),
         helper.make_node("Add", ["carried", "chosen"], ["summed"]), helper.make_node("Identity", ["cond"], ["again"])],
        "body", [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []),
                 helper.make_tensor_value_info("carried", f, None)],
        [helper.make_tensor_value_info("again", onnx.TensorProto.BOOL, []), helper.make_tensor_value_info("summed", f, None)])
    return helper.make_node("Loop", ["trips", "true", "start"], ["end"], body=body)


def test_outer_reads_are_the_names_a_body_reads_from_outside_it():
    loop = _loop_reading("a")
    assert outer_reads(loop) == {"a"}          # not the body's own inputs and outputs ("cond", "carried", "chosen")
    rename_outer_reads(loop, {"a": "a/recomputed", "carried": "elsewhere"})
    assert outer_reads(loop) == {"a/recomputed"}
    body = loop.attribute[0].g
    assert list(body.node[1].input) == ["carried", "chosen"]   # a name the body defines is its own
