"""onnxlrp/model.py: writing models, with their weights beside them."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxlrp.model import save_model


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)
               for name, shape in (("w1", (8, 300)), ("w2", (300, 5)), ("small", (5,)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["z"]),
             helper.make_node("Add", ["z", "small"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    model.metadata_props.add(key="onnxlrp", value="{}")
    return model


def test_weights_saved_beside_the_model_leave_the_proto_as_it_was(tmp_path):
    """save_model with external data writes the weights into <name>.data, page-aligned (onnxruntime maps them),
    and the model it was given keeps its weights: onnx.save_model's own external data moves them out of it."""
    model = _model()
    before = model.SerializeToString()
    path = save_model(model, tmp_path / "m.onnx", external_data=True)
    assert model.SerializeToString() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    light = onnx.load(str(path), load_external_data=False)
    external = {t.name: {e.key: e.value for e in t.external_data} for t in light.graph.initializer
                if t.data_location == TensorProto.EXTERNAL}
    assert sorted(external) == ["w1", "w2"]   # the 20-byte one stays inline
    assert all(int(e["offset"]) % 4096 == 0 and e["location"] == "m.onnx.data" for e in external.values())
    loaded = onnx.load(str(path))
    assert loaded.metadata_props[0].key == "onnxlrp"
    for original, read in zip(model.graph.initializer, loaded.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(read), numpy_helper.to_array(original))
    x = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    expected = ort.InferenceSession(before, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    served = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(served, expected)
