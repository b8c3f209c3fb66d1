"""Pad / Slice / Split / Gather route relevance exactly (R_x = J^T R, padding dropped); Resize and
ReduceMean / ReduceSum are Norm (R_x = x * J^T [R / stab(y)]); gated products hold the gate constant.
References are finite-difference Jacobians of onnx's float64 reference evaluator."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from reference import explain_custom, jacobian_fd, rel_l2, run_reference, single_op_model, stab

from onnxlrp import Explainer, composites, rules
from onnxlrp.errors import UnsupportedOpError


def _model(op, x_shape, inits=(), attrs=None, opset=18, n_outputs=1):
    return single_op_model(op, x_shape, dict(inits), attrs or {}, opset=opset, n_outputs=n_outputs)


def _explain_random(model, x, rng):
    """(model output, random output relevance, onnxlrp's input relevance, per-sample Jacobians)."""
    out = run_reference(model, x)
    R = rng.normal(size=out.shape).astype(np.float32)
    return out, R, explain_custom(model, x, R), [jacobian_fd(model, x[i:i + 1]) for i in range(len(x))]


def _check_routing(model, x, rng):
    _, R, got, jacobians = _explain_random(model, x, rng)
    for i, J in enumerate(jacobians):
        assert rel_l2(got[i], (J.T @ R[i]).reshape(x.shape[1:])) < 1e-6


def _check_norm(model, x, rng):
    out, R, got, jacobians = _explain_random(model, x, rng)
    for i, J in enumerate(jacobians):
        want = x[i].ravel() * (J.T @ (R[i] / stab(out[i], 1e-6)))
        assert rel_l2(got[i], want.reshape(x.shape[1:])) < 1e-4
    # a linear map without bias conserves
    assert np.allclose(got.reshape(len(x), -1).sum(1), R.sum(1), rtol=1e-3, atol=1e-4)


i64 = lambda *v: np.array(v, np.int64)  # noqa: E731

ROUTING = {
    "pad_spatial": ("Pad", (2, 2, 3, 4), [("pads", i64(0, 0, 1, 2, 0, 0, 2, 1))], {}),
    "slice_contiguous": ("Slice", (2, 3, 5, 4), [("s", i64(1, 1)), ("e", i64(4, 100)), ("a", i64(2, 1))], {}),
    "slice_steps": ("Slice", (2, 3, 7, 6), [("s", i64(1, -1)), ("e", i64(7, 0)), ("a", i64(2, 3)),
                                            ("st", i64(2, -2))], {}),
    "gather_channels": ("Gather", (2, 4, 3), [("i", i64(3, 0, 0, -1))], dict(axis=1)),
    "gather_scalar": ("Gather", (2, 4, 3), [("i", np.array(1, np.int64))], dict(axis=2)),
    "tile": ("Tile", (2, 2, 3), [("r", i64(1, 3, 2))], {}),
    "expand": ("Expand", (2, 2, 1), [("s", i64(1, 2, 4))], {}),
}


@pytest.mark.parametrize("case", list(ROUTING))
def test_routing_ops_are_the_transposed_jacobian(case, rng):
    op, shape, inits, attrs = ROUTING[case]
    _check_routing(_model(op, shape, inits, attrs), rng.normal(size=shape).astype(np.float32), rng)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_drops_the_relevance_of_padding(mode, rng):
    """Negative pads crop: the cropped input elements get nothing; padded elements' relevance is dropped."""
    shape = (2, 2, 4, 5)
    model = _model("Pad", shape, [("pads", i64(0, 0, -1, 2, 0, 0, 1, -2))], dict(mode=mode))
    x = rng.normal(size=shape).astype(np.float32)
    R = rng.normal(size=(2, 2 * 4 * 5)).astype(np.float32)
    got = explain_custom(model, x, R)
    want = np.zeros(shape, np.float32)
    want[:, :, 1:, :3] = R.reshape(2, 2, 4, 5)[:, :, 0:3, 2:5]
    assert np.array_equal(got, want)


def test_split_concatenates_back(rng):
    shape = (2, 5, 3)
    model = _model("Split", shape, [("sizes", i64(2, 3))], dict(axis=1), n_outputs=2)
    _check_routing(model, rng.normal(size=shape).astype(np.float32), rng)


def test_split_output_without_relevance_sends_zeros(rng):
    shape = (2, 4, 3)
    nodes = [helper.make_node("Split", ["x", "sizes"], ["a", "b"], axis=1, name="split"),
             helper.make_node("Flatten", ["a"], ["logits"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(i64(1, 3), "sizes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.normal(size=shape).astype(np.float32)
    R = rng.normal(size=(2, 3)).astype(np.float32)
    got = explain_custom(model, x, R)
    assert np.array_equal(got[:, 0], R) and not got[:, 1:].any()


def _resize(shape, mode, scales=None, sizes=None, **attrs):
    inits = [("roi", np.zeros(0, np.float32)), ("scales", np.asarray(scales if scales else [], np.float32))]
    if sizes:
        inits.append(("sizes", np.asarray(sizes, np.int64)))
    return _model("Resize", shape, inits, dict(mode=mode, **attrs))


RESIZES = {
    "nearest_x2": lambda: _resize((2, 2, 3, 4), "nearest", [1, 1, 2, 2]),
    "linear_half_pixel": lambda: _resize((2, 2, 3, 4), "linear", [1, 1, 2, 1.5]),
    "linear_align_corners_sizes": lambda: _resize((1, 2, 3, 3), "linear", sizes=[5, 7], axes=[2, 3],
                                                  coordinate_transformation_mode="align_corners"),
    "cubic_down": lambda: _resize((1, 1, 6, 6), "cubic", [1, 1, 0.5, 0.5]),
}


@pytest.mark.parametrize("case", list(RESIZES))
def test_resize_is_norm(case, rng):
    model = RESIZES[case]()
    shape = {"nearest_x2": (2, 2, 3, 4), "linear_half_pixel": (2, 2, 3, 4), "linear_align_corners_sizes": (1, 2, 3, 3),
             "cubic_down": (1, 1, 6, 6)}[case]
    x = (rng.uniform(0.5, 1.5, size=shape)).astype(np.float32)  # y away from 0
    _check_norm(model, x, rng)


@pytest.mark.parametrize("op,axes,keepdims", [("ReduceMean", [2, 3], 1), ("ReduceSum", [1], 0),
                                             ("ReduceMean", [-1], 0)])
def test_reduce_is_norm(op, axes, keepdims, rng):
    shape = (2, 3, 4, 2)
    model = _model(op, shape, [("axes", i64(*axes))], dict(keepdims=keepdims))
    _check_norm(model, rng.uniform(0.5, 1.5, size=shape).astype(np.float32), rng)


def test_batch_axis_gather_is_refused(rng):
    model = _model("Gather", (2, 3), [("i", i64(0))], dict(axis=0))
    with pytest.raises(UnsupportedOpError, match="batch axis"):
        Explainer(model).compiled()


def _gated(gate_nodes, shape=(2, 3, 4, 4)):
    """y = Mul(x, gate(x)) -> logits; gate_nodes compute 'g' from 'x'."""
    nodes = gate_nodes + [helper.make_node("Mul", ["x", "g"], ["y"], name="gated"),
                          helper.make_node("Flatten", ["y"], ["logits"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         ["N"] + list(shape[1:]))],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.full((3, 3, 1, 1), 0.3, np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("gate", ["swish", "squeeze_excitation", "gelu_erf"])
def test_gate_is_held_constant(gate, rng):
    gates = {
        "swish": [helper.make_node("Sigmoid", ["x"], ["g"])],
        "squeeze_excitation": [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
                               helper.make_node("Conv", ["p", "w"], ["c"]),
                               helper.make_node("Sigmoid", ["c"], ["g"])],
        "gelu_erf": [helper.make_node("Erf", ["x"], ["e"]), helper.make_node("Sigmoid", ["e"], ["g"])],
    }
    model = _gated(gates[gate])
    x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    R = rng.normal(size=(2, 48)).astype(np.float32)
    explainer = Explainer(model, composite=composites.Uniform(rules.Epsilon()))
    assert np.array_equal(explainer.explain(x, mode="custom", output_relevance=R).relevance, R.reshape(x.shape))
    # the product is the only layer: the gate's own layers are not on the relevance path; x * h(x) with h
    # element-wise is one non-linearity (the identity rule), a gate computed through a layer is held constant
    expected = "gate: Constant()" if gate == "squeeze_excitation" else "nonlinear: Pass()"
    assert [(name, rule) for name, _, rule in explainer.compiled().layer_rules] == [("gated", expected)]


def test_product_of_unrelated_tensors_shares_relevance_uniformly(rng):
    """docs/rules.md, "One compiler": a product of two computed tensors, neither gating the other, gives each
    operand half of its relevance (AttnLRP's uniform rule), whatever the composite."""
    nodes = [helper.make_node("MatMul", ["x", "wa"], ["a"]), helper.make_node("MatMul", ["x", "wb"], ["b"]),
             helper.make_node("Mul", ["a", "b"], ["logits"], name="product")]
    wa, wb = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(wa, "wa"), numpy_helper.from_array(wb, "wb")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.normal(size=(2, 3)).astype(np.float32)
    explainer = Explainer(model, composite=composites.Uniform(rules.LRP0()), layer_relevances=True)
    res = explainer.explain(x, target=1)
    assert ("product", "Mul", "bilinear: UniformShare(share=0.5)") in explainer.compiled().layer_rules
    a, b = x @ wa, x @ wb
    z = a[:, 1] * b[:, 1]
    # LRP-0 on each dense layer: R_x = x * w_c * R_c / z_c, with half of z at each operand
    expected = x * wa[:, 1] * (0.5 * z / a[:, 1])[:, None] + x * wb[:, 1] * (0.5 * z / b[:, 1])[:, None]
    np.testing.assert_allclose(res.relevance, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.relevance.sum(1), z, rtol=1e-4)
