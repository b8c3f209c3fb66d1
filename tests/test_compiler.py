"""Properties of the emitted explainer graph that its speed depends on."""
import onnx
import pytest
from onnx import TensorProto, shape_inference

from onnxlrp import composites
from onnxlrp.compiler import compile_explainer


def _dims(value):
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize("model", ["small_vgg.onnx", "tiny_resnet.onnx"])
@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_every_relevance_tensor_has_a_known_shape(models_dir, model, composite):
    """Shape inference knows every float tensor of the relevance graph, with the input's batch name:
    onnxruntime keeps a Mul or Add in its NCHWc layout only where it can prove that the shapes agree
    (a Shape-fed Reshape, or ConstantOfShape(Shape(x)), would lose them for every layer below)."""
    chosen = composites.get(composite, low=-3.0, high=3.0) if "box" in composite else composites.get(composite)
    explainer = compile_explainer(models_dir / model, composite=chosen).model
    inferred = shape_inference.infer_shapes(explainer)
    batch = _dims(inferred.graph.input[0])[0]
    values = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    unknown = []
    for node in inferred.graph.node:
        if not node.name.startswith("lrp/"):
            continue
        for name in node.output:
            value = values.get(name)
            if value is None or value.type.tensor_type.elem_type != TensorProto.FLOAT:
                continue
            dims = _dims(value)
            if len(dims) >= 2 and (dims[0] != batch or None in dims or any(isinstance(d, str) for d in dims[1:])):
                unknown.append((node.op_type, node.name, dims))
    assert not unknown, unknown[:5]


def test_known_shapes_survive_onnx_checker(models_dir):
    explainer = compile_explainer(models_dir / "small_vgg.onnx", composite="epsilon_plus_flat").model
    onnx.checker.check_model(explainer)


def test_epsilon_dense_layers_transpose_the_forward_weight_itself(models_dir):
    """Epsilon's transposed pass reads the forward Gemm's own W: no copy (VGG-16's fc1 would be 400 MB)."""
    explainer = compile_explainer(models_dir / "small_vgg.onnx", composite="epsilon_plus_flat").model
    weights = {t.name: t for t in explainer.graph.initializer}
    gemms = [n for n in explainer.graph.node if n.op_type == "Gemm" and not n.name.startswith("lrp/")]
    transposes = [n for n in explainer.graph.node if n.op_type == "MatMul" and n.name.startswith("lrp/")]
    assert gemms and {n.input[1] for n in transposes} == {n.input[1] for n in gemms}
    for gemm in gemms:
        same = [t for t in weights.values() if t.raw_data == weights[gemm.input[1]].raw_data]
        assert len(same) == 1


def test_compile_checks_a_given_model_and_leaves_it_as_it_was(models_dir, tmp_path):
    """onnxlrp.compile checks a ModelProto it is given (a file is checked as the compiler loads it, without a
    second copy of its weights) and writes the explainer; the proto stays as it was."""
    import numpy as np
    from onnx import numpy_helper

    import onnxlrp
    from onnxlrp.errors import UnsupportedModelError
    model = onnx.load(models_dir / "tiny_resnet.onnx")
    before = model.SerializeToString()
    written = onnxlrp.compile(model, tmp_path / "explainer.onnx", composite="epsilon_plus_flat")
    assert model.SerializeToString() == before
    assert onnx.load(str(written)).producer_name == "onnxlrp"
    weight = next(t for t in model.graph.initializer if len(t.dims) == 4)
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] = np.nan
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    with pytest.raises(UnsupportedModelError, match="NaN"):
        onnxlrp.compile(model, tmp_path / "broken.onnx", composite="epsilon_plus_flat")
    assert not (tmp_path / "broken.onnx").exists()
