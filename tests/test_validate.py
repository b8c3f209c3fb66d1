"""onnxlrp.validate: the bytes an initialiser holds against what its dims promise, packed 4-bit types too."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxlrp.errors import ModelLoadError
from onnxlrp.validate import validate


def _with_initializer(tensor: onnx.TensorProto) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [tensor])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize("elem_type", [TensorProto.UINT4, TensorProto.INT4])
def test_packed_four_bit_weights_hold_half_a_byte_each(elem_type):
    """A [128, 63] uint4 table (as onnxruntime-genai's GatherBlockQuantized reads) holds ceil(128 * 63 / 2) bytes."""
    packed = helper.make_tensor("q", elem_type, [128, 63], np.zeros(128 * 63 // 2, np.uint8).tobytes(), raw=True)
    validate(_with_initializer(packed))
    short = onnx.TensorProto()
    short.CopyFrom(packed)
    short.raw_data = short.raw_data[:100]
    with pytest.raises(ModelLoadError, match="the file is damaged"):
        validate(_with_initializer(short))


def test_a_model_too_large_for_onnxruntimes_loader_may_use_its_onnx_domain_ops(monkeypatch):
    """onnxruntime-genai writes SimplifiedLayerNormalization in the onnx domain; onnx's checker (which checks models
    above ORT_CHECK_LIMIT) does not know it, but must not refuse it, nor leave the model changed. An op neither
    knows is still refused."""
    import onnxlrp.validate as V
    monkeypatch.setattr(V, "ORT_CHECK_LIMIT", 0)
    node = helper.make_node("SimplifiedLayerNormalization", ["x", "g"], ["y"], epsilon=1e-6, axis=-1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor("g", TensorProto.FLOAT, [2], [1.0, 2.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    before = model.SerializeToString()
    validate(model)
    assert model.SerializeToString() == before
    model.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(ModelLoadError, match="fails onnx's checker"):
        validate(model)
