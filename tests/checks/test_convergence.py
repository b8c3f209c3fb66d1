"""Cosine-similarity convergence: the statistic's known answers, and the published qualitative result
(ZPlus converges towards 1 in the lower layers, LRP-0/epsilon stay far from it)."""
import numpy as np
import pytest

from onnxlrp import Explainer
from onnxlrp.checks import convergence
from onnxlrp.checks.convergence import channel_vectors, median_abs_pair_cosine


def test_pair_cosine_known_answers(rng):
    direction = rng.normal(size=16)
    parallel = np.stack([direction * s for s in (1.0, -2.0, 0.5)])[:, None, :]   # [M=3, 1 location, C]
    assert median_abs_pair_cosine(parallel) == pytest.approx(1.0)
    orthogonal = np.eye(4)[:, None, :]
    assert median_abs_pair_cosine(orthogonal) == 0.0
    with_zero = np.concatenate([parallel, np.zeros((1, 1, 16))])                  # no angle: left out
    assert median_abs_pair_cosine(with_zero) == pytest.approx(1.0)
    # random vectors: cos ~ N(0, 1/C), so the median |cos| is about 0.6745 / sqrt(C)
    random = rng.normal(size=(20, 200, 64))
    assert median_abs_pair_cosine(random) == pytest.approx(0.6745 / 8, rel=0.08)


def test_channel_vectors_per_location():
    relevance = np.arange(2 * 3 * 2 * 2, dtype=float).reshape(2, 3, 2, 2)
    vectors = channel_vectors(relevance, 1)
    assert vectors.shape == (2, 4, 3)
    np.testing.assert_array_equal(vectors[1, 3], relevance[1, :, 1, 1])
    assert channel_vectors(np.ones((2, 5)), 1).shape == (2, 1, 5)


def test_zplus_converges_in_the_lower_layers_epsilon_does_not(models_dir, rng):
    x = rng.uniform(0, 1, size=(2, 3, 32, 32)).astype(np.float32)
    found = {}
    for name in ("epsilon", "zplus"):
        explainer = Explainer(models_dir / "small_vgg.onnx", composite=name, layer_relevances=True)
        found[name] = convergence(explainer, x, injections=6)
    conv = [row for row in found["zplus"].layers if row.label.startswith("conv")]
    lowest_zplus = conv[-1]
    lowest_epsilon = [row for row in found["epsilon"].layers if row.label.startswith("conv")][-1]
    assert lowest_zplus.vector_length == 3 and conv[-2].vector_length == 32
    assert conv[-2].median_abs_cosine > 0.95 and lowest_zplus.median_abs_cosine > 0.95
    epsilon_conv32 = [row for row in found["epsilon"].layers if row.label.startswith("conv")][-2]
    assert epsilon_conv32.median_abs_cosine < 0.8
    assert lowest_epsilon.median_abs_cosine < lowest_zplus.median_abs_cosine
    for row in found["epsilon"].layers:
        assert row.baseline < 0.6
    # class sensitivity: ZPlus gives (almost) the same heatmap for any class, epsilon does not
    assert found["zplus"].class_sensitivity.min() > 0.9
    assert found["epsilon"].class_sensitivity.max() < 0.9
    assert "class sensitivity" in found["zplus"].table()


def test_needs_layer_relevances(models_dir):
    with pytest.raises(ValueError, match="layer_relevances"):
        convergence(Explainer(models_dir / "tiny_vgg.onnx"), np.zeros((1, 3, 32, 32), np.float32))


def test_channel_axis_inside_a_channels_last_model(rng):
    """A Keras-style NHWC input transposed to NCHW for the convs: inside the model the channel vectors are
    the convs' axis 1, only the input's are its last axis."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(rng.normal(size=(16, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(5, 16, 3, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("GlobalAveragePool", ["c2"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["logits"])]
    graph = helper.make_graph(nodes, "nhwc", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 6, 7, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.uniform(0, 1, size=(1, 6, 7, 3)).astype(np.float32)
    result = convergence(Explainer(model, composite="epsilon", layer_relevances=True), x, injections=3,
                         channel_axis=-1, class_sensitivity=False)
    lengths = {row.label: row.vector_length for row in result.layers}
    assert lengths == {"output": 5, "conv2": 16, "conv1": 3, "input/image": 3}


def test_injection_at_an_inner_layer(models_dir, rng):
    x = rng.uniform(0, 1, size=(1, 3, 32, 32)).astype(np.float32)
    explainer = Explainer(models_dir / "small_vgg.onnx", composite="zplus", layer_relevances=True)
    result = convergence(explainer, x, injections=4, inject_at="relu_17")   # [N, 64, 8, 8], under conv_16
    assert [row.label for row in result.layers] == ["output", "conv_16", "conv_12", "conv_7", "conv_3", "input/image"]
    assert result.layers[0].vector_length == 64 and result.class_sensitivity is None
    assert result.layers[0].median_abs_cosine < 0.2            # the injected random vectors themselves
    assert result.layers[-2].median_abs_cosine > 0.95           # ZPlus has converged two layers down
    with pytest.raises(ValueError, match="no tensor 'nowhere'"):
        convergence(explainer, x, inject_at="nowhere")
