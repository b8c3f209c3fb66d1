"""Residual joins (Norm), Concat and shape ops (exact routing), activations (Pass)."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from reference import explain_custom, rel_l2, stab


def _model(nodes, inputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _x(shape):
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"] + list(shape[1:]))


def test_residual_add_is_norm(rng):
    """y = x + relu(x): R_x = x * s + (relu part routed back), s = R / stab(y)."""
    shape = (2, 3, 4)
    model = _model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["x", "r"], ["y"]),
                    helper.make_node("Flatten", ["y"], ["logits"])], [_x(shape)])
    x = rng.normal(size=shape).astype(np.float32)
    y = x + np.maximum(x, 0)
    R = (y.reshape(2, -1) * rng.normal(size=(2, 12))).astype(np.float32)
    s = R.reshape(shape) / stab(y, 1e-6)
    want = x * s + np.maximum(x, 0) * s  # the Relu passes its share straight on
    assert rel_l2(explain_custom(model, x, R), want) < 1e-5
    # a join conserves: nothing is lost where y != 0
    assert np.allclose(explain_custom(model, x, R).sum(axis=(1, 2)), R.sum(axis=1), rtol=1e-4)


def test_add_with_broadcast_sums_back(rng):
    """Add of [N,C,H,W] and [N,C,1,1] computed tensors: the small operand gets its share summed."""
    shape = (2, 3, 2, 2)
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]), helper.make_node("Add", ["x", "g"], ["y"]),
             helper.make_node("Flatten", ["y"], ["logits"])]
    model = _model(nodes, [_x(shape)])
    x = rng.normal(size=shape).astype(np.float32)
    R = rng.normal(size=(2, 12)).astype(np.float32)
    got = explain_custom(model, x, R)
    g = x.mean(axis=(2, 3), keepdims=True)
    s = R.reshape(shape) / stab(x + g, 1e-6)
    share_g = (g * s).sum(axis=(2, 3), keepdims=True)
    s_g = share_g / stab(g, 1e-6)
    want = x * s + x * s_g / 4
    assert rel_l2(got, want) < 1e-5


def test_concat_routes_exactly(rng):
    shape = (2, 2, 3)
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["b"]),
             helper.make_node("Concat", ["a", "x"], ["y"], axis=1), helper.make_node("Flatten", ["y"], ["logits"])]
    model = _model(nodes, [_x(shape)])
    x = rng.normal(size=shape).astype(np.float32)
    R = rng.normal(size=(2, 12)).astype(np.float32)
    got = explain_custom(model, x, R)
    parts = R.reshape(2, 4, 3)
    assert rel_l2(got, parts[:, :2] + parts[:, 2:]) < 1e-6


@pytest.mark.parametrize("op,attrs,extra", [
    ("Transpose", dict(perm=[0, 2, 3, 1]), None),
    ("Reshape", {}, np.array([0, 4, -1], np.int64)),
    ("Unsqueeze", {}, np.array([2], np.int64)),
    ("Flatten", dict(axis=1), None),
])
def test_shape_ops_route_exactly(op, attrs, extra, rng):
    shape = (2, 2, 3, 2)
    inputs = ["x"] + (["c"] if extra is not None else [])
    inits = [("c", extra)] if extra is not None else []
    nodes = [helper.make_node(op, inputs, ["y"], **attrs), helper.make_node("Flatten", ["y"], ["logits"])]
    model = _model(nodes, [_x(shape)], inits)
    x = rng.normal(size=shape).astype(np.float32)
    R = rng.normal(size=(2, 12)).astype(np.float32)
    got = explain_custom(model, x, R)
    if op == "Transpose":
        want = R.reshape(2, 3, 2, 2).transpose(0, 3, 1, 2)
    else:
        want = R.reshape(shape)
    assert rel_l2(got, want) < 1e-7


@pytest.mark.parametrize("op,attrs", [("Relu", {}), ("LeakyRelu", dict(alpha=0.1)), ("Sigmoid", {}), ("Tanh", {}),
                                      ("Elu", {}), ("Softplus", {}), ("HardSigmoid", {}), ("HardSwish", {}),
                                      ("Selu", {}), ("Mish", {})])
def test_activations_pass(op, attrs, rng):
    shape = (2, 6)
    model = _model([helper.make_node(op, ["x"], ["y"], **attrs), helper.make_node("Flatten", ["y"], ["logits"])],
                   [_x(shape)], opset=18)
    x = rng.normal(size=shape).astype(np.float32)
    R = rng.normal(size=shape).astype(np.float32)
    assert np.array_equal(explain_custom(model, x, R), R)


def test_fan_out_sums_relevance(rng):
    """x feeds two branches whose outputs are concatenated: R_x is the sum of both shares."""
    shape = (2, 3)
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["logits"], axis=1)]
    model = _model(nodes, [_x(shape)])
    x = rng.normal(size=shape).astype(np.float32)
    R = rng.normal(size=(2, 6)).astype(np.float32)
    assert rel_l2(explain_custom(model, x, R), R[:, :3] + R[:, 3:]) < 1e-7
