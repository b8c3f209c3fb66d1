"""Whole models: LRP-0 equals gradient x input on ReLU nets, conservation per layer, the explainer's
own outputs equal the original model's, the checker accepts it, any batch size runs."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from reference import jacobian_fd, rel_l2

from onnxlrp import Explainer, composites, rules
from onnxlrp.compiler import compile_explainer

BUNDLED = ["tiny_vgg", "tiny_resnet", "mlp"]

# LRP-0 everywhere: Epsilon(0) on weighted layers and an unstabilised Norm on pooling and joins
LRP0 = composites.LayerMap([(op, rules.Norm(stabilizer=0.0)) for op in ("AveragePool", "GlobalAveragePool", "Add")],
                           base=composites.Uniform(rules.Epsilon(epsilon=0.0)))


def _logits_name(model):
    for node in model.graph.node:
        if node.op_type == "Softmax":
            return node.input[0]
    return model.graph.output[0].name


def _sample(model, rng, batch=1):
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    return rng.normal(size=[batch] + dims).astype(np.float32)


def _batchable(model):
    """A copy whose flatten Reshape keeps the batch ([1, -1] -> [0, -1]) so finite differences can batch."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    shapes = {n.input[1] for n in copy.graph.node if n.op_type == "Reshape"}
    for init in copy.graph.initializer:
        if init.name in shapes:
            target = numpy_helper.to_array(init).copy()
            if target[0] == 1:
                target[0] = 0
                init.CopyFrom(numpy_helper.from_array(target, init.name))
    return copy


def _gradient_x_input(model, x, target, indices=None):
    """Gradient x input by float64 finite differences, at every input coordinate or at `indices`."""
    J = jacobian_fd(_batchable(model), x, output=_logits_name(model), indices=indices)
    flat = x.ravel() if indices is None else x.ravel()[indices]
    return J[target] * flat


def _bias_free_cnn(rng):
    """A sequential ReLU CNN without biases: LRP-0 and z+ conserve relevance exactly, layer by layer."""
    def w(*shape):
        return numpy_helper.from_array(rng.normal(scale=0.5, size=shape).astype(np.float32), f"w{len(inits)}")
    inits = []
    inits.append(w(6, 3, 3, 3))
    inits.append(w(6, 6, 3, 3))
    inits.append(w(4, 6 * 2 * 2))
    nodes = [
        helper.make_node("Conv", ["x", inits[0].name], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", inits[1].name], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("AveragePool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"]),
        helper.make_node("Gemm", ["f", inits[2].name], ["logits"], transB=1),
    ]
    graph = helper.make_graph(nodes, "bias_free", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("name", ["tiny_vgg", "tiny_resnet"])
def test_lrp0_equals_gradient_times_input(name, models_dir, rng):
    model = onnx.load(str(models_dir / f"{name}.onnx"))
    x = _sample(model, rng)
    explanation = Explainer(model, composite=LRP0).explain(x, target=None)
    target = int(explanation.target[0])
    # the float64 reference MaxPool is slow: check 256 random input coordinates
    indices = np.sort(rng.choice(x.size, size=256, replace=False))
    want = _gradient_x_input(model, x, target, indices)
    assert rel_l2(explanation.relevance.ravel()[indices], want) < 1e-4


def test_lrp0_equals_gradient_times_input_mlp(models_dir, rng):
    model = onnx.load(str(models_dir / "mlp.onnx"))
    x = _sample(model, rng)
    explanation = Explainer(model, composite=LRP0).explain(x, target=2)
    assert rel_l2(explanation.relevance.ravel(), _gradient_x_input(model, x, 2)) < 1e-4


@pytest.mark.parametrize("composite", [LRP0, composites.Uniform(rules.ZPlus(zero_bias=True)),
                                       composites.EpsilonPlus(epsilon=0.0)])
def test_conservation_layer_by_layer(composite, rng):
    model = _bias_free_cnn(rng)
    x = np.abs(rng.normal(size=(3, 3, 8, 8))).astype(np.float32)
    explanation = Explainer(model, composite=composite, layer_sums=True).explain(x, target=[0, 1, 3])
    sums = explanation.layer_sums
    start = sums["lrp_sum/output"]
    assert len(sums) == 5  # output, three weighted layers, input
    for name, value in sums.items():
        assert np.allclose(value, start, rtol=1e-4), name


def test_positivity_of_zplus_and_flat(rng):
    model = _bias_free_cnn(rng)
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    for composite in (composites.Uniform(rules.ZPlus()), composites.Uniform(rules.Flat()),
                      composites.Uniform(rules.WSquare())):
        relevance = Explainer(model, composite=composite).explain(x, mode="one").relevance
        assert relevance.min() >= 0


@pytest.mark.parametrize("name", BUNDLED)
def test_explainer_reproduces_outputs_and_passes_checker(name, models_dir, rng):
    model = onnx.load(str(models_dir / f"{name}.onnx"))
    compiled = compile_explainer(model, composite=composites.EpsilonPlusFlat())
    onnx.checker.check_model(compiled.model, full_check=True)
    original = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    explainer = Explainer(model)
    batches = [1] if model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1 else [1, 4]
    for batch in batches:
        x = _sample(model, rng, batch)
        want = original.run(None, {model.graph.input[0].name: x})
        got = explainer.explain(x)
        for a, b in zip(got.outputs, want):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert got.relevance.shape == x.shape and np.all(np.isfinite(got.relevance))


def test_baked_batch_of_one_becomes_dynamic(models_dir, rng):
    """tiny_vgg was exported with batch 1 (input and flatten Reshape [1, -1]); the explainer takes any batch."""
    model = onnx.load(str(models_dir / "tiny_vgg.onnx"))
    explainer = Explainer(model)
    x = _sample(model, rng, 5)
    batched = explainer.explain(x, target=3)
    single = np.concatenate([explainer.explain(x[i:i + 1], target=3).relevance for i in range(5)])
    np.testing.assert_allclose(batched.relevance, single, rtol=1e-5, atol=1e-7)
    original = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    probabilities = np.concatenate([original.run(None, {"image": x[i:i + 1]})[0] for i in range(5)])
    np.testing.assert_allclose(batched.outputs[0], probabilities, rtol=1e-5, atol=1e-6)
    for value in list(explainer.compiled().model.graph.input) + list(explainer.compiled().model.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_output_relevance_modes(models_dir, rng):
    model = onnx.load(str(models_dir / "tiny_resnet.onnx"))
    explainer = Explainer(model, composite=LRP0, layer_sums=True)
    x = _sample(model, rng, 2)
    logits = explainer.explain(x, target=[1, 2])
    one = explainer.explain(x, target=[1, 2], mode="one")
    prob = explainer.explain(x, target=[1, 2], mode="prob")
    z = logits.outputs[0]
    softmax = np.exp(z - z.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    np.testing.assert_allclose(logits.layer_sums["lrp_sum/output"], z[[0, 1], [1, 2]], rtol=1e-6)
    np.testing.assert_allclose(one.layer_sums["lrp_sum/output"], [1.0, 1.0])
    np.testing.assert_allclose(prob.layer_sums["lrp_sum/output"], softmax[[0, 1], [1, 2]], rtol=1e-5)
    # LRP-0 is linear in the start relevance: logit-mode relevance = z_c * one-mode relevance
    np.testing.assert_allclose(logits.relevance, one.relevance * z[[0, 1], [1, 2]][:, None, None, None],
                               rtol=1e-4, atol=1e-6)
    custom = explainer.explain(x, mode="custom", output_relevance=np.eye(10, dtype=np.float32)[[1, 2]])
    np.testing.assert_allclose(custom.relevance, one.relevance, rtol=1e-6, atol=1e-7)
    assert custom.target is None
    predicted = explainer.explain(x)
    np.testing.assert_array_equal(predicted.target, z.argmax(1))


def test_unfolded_batchnorm_passes(rng):
    """A BatchNormalization with no layer before it (on the input) stays and passes relevance through."""
    c = 3
    inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in [
        ("g", rng.uniform(0.5, 1.5, c)), ("b", rng.normal(size=c)), ("m", rng.normal(size=c)),
        ("v", rng.uniform(0.5, 1.5, c)), ("w", rng.normal(size=(2, c * 4)))]]
    nodes = [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["n"]),
             helper.make_node("Flatten", ["n"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "bn_input", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 2, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.normal(size=(2, c, 2, 2)).astype(np.float32)
    explainer = Explainer(model, composite=composites.Uniform(rules.Epsilon(epsilon=0.0)))
    relevance = explainer.explain(x, mode="one", target=0).relevance
    assert any(n.op_type == "BatchNormalization" for n in explainer.compiled("one").model.graph.node)
    assert relevance.shape == x.shape and np.all(np.isfinite(relevance))
