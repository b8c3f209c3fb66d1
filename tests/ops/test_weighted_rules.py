"""Every rule on single Conv / ConvTranspose / Gemm / MatMul layers against the dense-Jacobian reference."""
import numpy as np
import pytest
from reference import explain_custom, dense_linear, rel_l2, rule_reference, single_op_model

from onnxlrp import composites, rules

RULES = {
    "epsilon": rules.Epsilon(),
    "epsilon_big": rules.Epsilon(epsilon=0.5),
    "zplus": rules.ZPlus(),
    "alphabeta": rules.AlphaBeta(alpha=2.0, beta=1.0),
    "gamma": rules.Gamma(gamma=0.25),
    "zbox": rules.ZBox(low=-1.5, high=2.0),
    "wsquare": rules.WSquare(),
    "flat": rules.Flat(),
    "zplus_zero_bias": rules.ZPlus(zero_bias=True),
    "gamma_zero_bias": rules.Gamma(gamma=0.5, zero_bias=True),
}

CONVS = {
    "2d_k3_s1_p1": ((2, 3, 6, 6), (4, 3, 3, 3), dict(pads=[1, 1, 1, 1])),
    "2d_k3_s2_p1": ((2, 3, 7, 7), (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "2d_k3_s2_p0_leftover": ((2, 2, 8, 8), (3, 2, 3, 3), dict(strides=[2, 2])),
    "2d_dilation2": ((2, 2, 7, 7), (3, 2, 3, 3), dict(dilations=[2, 2], pads=[2, 1, 2, 1])),
    "2d_groups2": ((2, 4, 5, 5), (6, 2, 3, 3), dict(group=2, pads=[1, 1, 1, 1])),
    "2d_depthwise": ((2, 3, 6, 6), (3, 1, 3, 3), dict(group=3, strides=[2, 2], pads=[1, 1, 1, 1])),
    "2d_asymmetric_pads": ((2, 2, 5, 6), (3, 2, 2, 3), dict(pads=[0, 1, 1, 0], strides=[2, 1])),
    "2d_same_upper_s2": ((2, 2, 7, 7), (3, 2, 3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "2d_same_lower": ((2, 2, 6, 6), (3, 2, 4, 4), dict(auto_pad="SAME_LOWER")),
    "2d_valid": ((2, 2, 6, 6), (3, 2, 3, 3), dict(auto_pad="VALID")),
    "1d_k3_s2_p1": ((2, 3, 9), (4, 3, 3), dict(strides=[2], pads=[1, 1])),
    "3d_k3_s1_p1": ((2, 2, 4, 4, 4), (3, 2, 3, 3, 3), dict(pads=[1] * 6)),
    "3d_k2_s2": ((2, 2, 4, 5, 4), (2, 2, 2, 2, 2), dict(strides=[2, 2, 2])),
    # stride 1 transposes run as a Conv over the flipped kernel, except where the pads exceed the kernel
    "2d_depthwise_s1": ((2, 3, 5, 5), (6, 1, 3, 3), dict(group=3, pads=[1, 1, 1, 1])),
    "1d_k1_s1": ((2, 4, 7), (5, 4, 1), {}),
    "1d_k1_p1_too_wide": ((2, 2, 5), (3, 2, 1), dict(pads=[1, 1])),
}


def _relevance_like(z_columns, rng):
    """Relevance as LRP produces it, proportional to the layer output (R = z * c, c of either sign).
    Outputs whose z nearly cancels get none: there R / z only measures float32 rounding, amplified."""
    z = z_columns.T
    relevance = z * rng.normal(size=z.shape)
    relevance[np.abs(z) < 0.05 * np.abs(z).mean()] = 0.0
    return relevance.astype(np.float32)


def _reference(name, rule, A, b, x, R, A_ones):
    out = []
    for xi, ri in zip(x, R):
        kwargs = dict(A_ones=A_ones, eps=rule.stabilizer, zero_bias=getattr(rule, "zero_bias", False))
        if name.startswith("gamma"):
            kwargs["gamma"] = rule.gamma
        if name == "zbox":
            kwargs.update(low=np.full(xi.size, rule.low), high=np.full(xi.size, rule.high))
        out.append(rule_reference(name.replace("_zero_bias", "").replace("_big", ""), A, b,
                                  xi.ravel().astype(np.float64), ri.astype(np.float64), **kwargs))
    return np.stack(out).reshape(x.shape)


def _check(op_type, x_shape, w_shape, attrs, rule_name, rng):
    rule = RULES[rule_name]
    weight = rng.normal(size=w_shape).astype(np.float32)
    out_channels = w_shape[0] if op_type == "Conv" else w_shape[1] * attrs.get("group", 1)
    bias = rng.normal(scale=0.5, size=out_channels).astype(np.float32)
    x = rng.normal(size=x_shape).astype(np.float32)
    model = single_op_model(op_type, x_shape, {"w": weight, "b": bias}, attrs)
    A, b = dense_linear(op_type, x_shape, weight, bias, attrs)
    A_ones, _ = dense_linear(op_type, x_shape, np.ones_like(weight), None, attrs)
    R = _relevance_like(A @ x.reshape(len(x), -1).T.astype(np.float64) + b[:, None], rng)
    got = explain_custom(model, x, R, rule)
    want = _reference(rule_name, rule, A, b, x, R, A_ones)
    assert got.shape == x.shape
    assert rel_l2(got, want) < 1e-5, rel_l2(got, want)


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("conv", list(CONVS))
def test_conv_rules_match_dense_reference(conv, rule_name, rng):
    x_shape, w_shape, attrs = CONVS[conv]
    _check("Conv", x_shape, w_shape, attrs, rule_name, rng)


CONV_TRANSPOSES = {
    "2d_s2_p1_op1": ((2, 3, 4, 4), (3, 2, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])),
    # grouped ConvTranspose is left out: onnx's reference evaluator (the independent side) cannot run it
    "2d_s1_p1": ((2, 4, 4, 4), (4, 3, 3, 3), dict(pads=[1, 1, 1, 1])),
}


@pytest.mark.parametrize("rule_name", ["epsilon", "zplus", "gamma", "alphabeta", "flat", "wsquare"])
@pytest.mark.parametrize("case", list(CONV_TRANSPOSES))
def test_conv_transpose_rules_match_dense_reference(case, rule_name, rng):
    x_shape, w_shape, attrs = CONV_TRANSPOSES[case]
    _check("ConvTranspose", x_shape, w_shape, attrs, rule_name, rng)


GEMMS = {
    "transB1": dict(transB=1),
    "transB0": dict(transB=0),
    "alpha_beta": dict(transB=1, alpha=0.5, beta=2.0),
    "row_bias": dict(transB=0, bias_shape=(1, 5)),
    "scalar_bias": dict(transB=1, bias_shape=()),
}


@pytest.mark.parametrize("rule_name", list(RULES))
@pytest.mark.parametrize("case", list(GEMMS))
def test_gemm_rules_match_dense_reference(case, rule_name, rng):
    attrs = dict(GEMMS[case])
    bias_shape = attrs.pop("bias_shape", (5,))
    rule = RULES[rule_name]
    n, k, m = 3, 6, 5
    w = rng.normal(size=(m, k) if attrs.get("transB") else (k, m)).astype(np.float32)
    bias = rng.normal(scale=0.5, size=bias_shape).astype(np.float32)
    x = rng.normal(size=(n, k)).astype(np.float32)
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["logits"], name="dense", **attrs)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", m])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    W = (w if attrs.get("transB") else w.T).astype(np.float64) * attrs.get("alpha", 1.0)
    b = np.broadcast_to(bias.astype(np.float64) * attrs.get("beta", 1.0), (1, m)).reshape(m)
    R = _relevance_like(W @ x.T.astype(np.float64) + b[:, None], rng)
    got = explain_custom(model, x, R, rule)
    want = _reference(rule_name, rule, W, b, x, R, np.ones_like(W))
    assert rel_l2(got, want) < 1e-5


def test_gemm_with_trans_a_behind_transpose(rng):
    """Gemm(transA=1) on a transposed input is the same dense layer."""
    from onnx import TensorProto, helper, numpy_helper

    n, k, m = 3, 4, 2
    w = rng.normal(size=(k, m)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
             helper.make_node("Gemm", ["xt", "w"], ["logits"], transA=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", m])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.normal(size=(n, k)).astype(np.float32)
    R = _relevance_like(w.T.astype(np.float64) @ x.T.astype(np.float64), rng)
    got = explain_custom(model, x, R, rules.Epsilon())
    want = np.stack([rule_reference("epsilon", w.T.astype(np.float64), np.zeros(m), xi.astype(np.float64), ri)
                     for xi, ri in zip(x, R)])
    assert rel_l2(got, want) < 1e-5


@pytest.mark.parametrize("rank", [2, 3])
@pytest.mark.parametrize("rule_name", ["epsilon", "zplus", "gamma"])
def test_matmul_add_is_a_dense_layer(rank, rule_name, rng):
    from onnx import TensorProto, helper, numpy_helper

    rule = RULES[rule_name]
    k, m = 5, 4
    w = rng.normal(size=(k, m)).astype(np.float32)
    bias = rng.normal(size=m).astype(np.float32)
    shape = ["N", k] if rank == 2 else ["N", 3, k]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"]),
             helper.make_node("Flatten", ["y"], ["logits"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.normal(size=[2] + shape[1:]).astype(np.float32)
    rows = x.reshape(-1, k)
    R = _relevance_like(w.T.astype(np.float64) @ rows.T.astype(np.float64) + bias[:, None], rng).reshape(2, -1)
    got = explain_custom(model, x, R, rule)
    want = np.stack([rule_reference(rule_name, w.T.astype(np.float64), bias.astype(np.float64), xi.astype(np.float64),
                                    ri.astype(np.float64), gamma=0.25)
                     for xi, ri in zip(rows, R.reshape(-1, m))]).reshape(x.shape)
    assert rel_l2(got, want) < 1e-5


def test_alpha_beta_rejects_bad_parameters():
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        rules.AlphaBeta(alpha=2.0, beta=2.0)
    with pytest.raises(ValueError, match=">= 0"):
        rules.AlphaBeta(alpha=-1.0, beta=-2.0)


def _dense_model(w, bias):
    from onnx import TensorProto, helper, numpy_helper

    m, k = w.shape
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["logits"], name="dense", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", m])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_gamma_closed_gate_with_zero_denominator_stays_finite():
    """Gamma's up-branch denominator z_up + eps (eps folded into the bias) is exactly 0 here, at an output
    whose z < 0 closes that branch's gate; the branch must pass 0 there, not 0 * inf = NaN."""
    eps = 2.0 ** -20                                 # exact in float32, so that -eps + eps is exactly 0
    w = np.array([[1.0, -1.0], [2.0, 1.0]], np.float32)
    bias = np.array([-eps, 0.5], np.float32)         # output 0: z = z_up = -eps at x = 0
    model = _dense_model(w, bias)
    x = np.zeros((1, 2), np.float32)
    R = np.array([[1.0, 1.0]], np.float32)
    got = explain_custom(model, x, R, rules.Gamma(gamma=0.25, stabilizer=eps))
    assert np.isfinite(got).all() and np.all(got == 0), got


def test_gamma_gates_are_masks_not_where():
    """The sign of Gamma's denominators is known when compiling: no data-dependent stabiliser, and the
    gates are a 0/1 Mul (onnxruntime's CPU Where with a scalar branch is many times slower)."""
    from onnxlrp.compiler import compile_explainer

    w = np.array([[1.0, -1.0, 0.5], [2.0, 1.0, -3.0]], np.float32)
    compiled = compile_explainer(_dense_model(w, np.array([0.1, -0.2], np.float32)),
                                 composite=composites.Uniform(rules.Gamma()), mode="custom")
    layer_ops = [n.op_type for n in compiled.model.graph.node if n.name.startswith("lrp/dense/")]
    assert "Where" not in layer_ops and "GreaterOrEqual" not in layer_ops, layer_ops
    assert layer_ops.count("Cast") == 2


def _relu_conv_model(conv, rng):
    """x -> Relu -> Conv -> Flatten -> logits: a layer whose input is known to be >= 0."""
    from onnx import TensorProto, helper, numpy_helper

    x_shape, w_shape, attrs = CONVS[conv]
    weight = rng.normal(size=w_shape).astype(np.float32)
    bias = rng.normal(scale=0.5, size=w_shape[0]).astype(np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu"),
             helper.make_node("Conv", ["h", "w", "b"], ["y"], name="layer", **attrs),
             helper.make_node("Flatten", ["y"], ["logits"], name="flatten", axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         ["N"] + list(x_shape[1:]))],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, weight, bias


def test_alpha_beta_after_relu_folds_both_stabilisers(rng):
    """After a ReLU, AlphaBeta's activating z is >= 0 and its inhibiting z <= 0 by construction: both
    stabilisers go into biases, with no data-dependent sign logic left in the layer."""
    from onnxlrp.compiler import compile_explainer

    model, _, _ = _relu_conv_model("2d_k3_s1_p1", rng)
    compiled = compile_explainer(model, composite=composites.Uniform(rules.AlphaBeta()), mode="custom")
    layer_ops = [n.op_type for n in compiled.model.graph.node if n.name.startswith("lrp/layer/")]
    assert layer_ops.count("Div") == 2 and not {"Where", "GreaterOrEqual", "Max", "Min"} & set(layer_ops), layer_ops


@pytest.mark.parametrize("conv", ["2d_k3_s1_p1", "2d_k3_s2_p1", "2d_groups2"])
@pytest.mark.parametrize("gamma", [0.25, 1.0])
def test_gamma_after_relu_shares_one_modified_forward(conv, gamma, rng, monkeypatch):
    """On inputs >= 0 (after a ReLU), both Gamma branches come from the forward z and one shared Conv
    (z_up = z + g p, z_down = (1 + g) z - g p, p = W+ x + b+): the same relevance as the formulas, with
    one Conv fewer (for layers this small only when the fan-in threshold is lowered)."""
    from onnxlrp.compiler import compile_explainer
    from onnxlrp.ops import weighted

    monkeypatch.setattr(weighted, "SHARED_CONV_MIN_FAN_IN", 0)

    x_shape, _, attrs = CONVS[conv]
    model, weight, bias = _relu_conv_model(conv, rng)
    rule = rules.Gamma(gamma=gamma)
    x = rng.normal(size=x_shape).astype(np.float32)
    h = np.maximum(x, 0)
    A, b = dense_linear("Conv", x_shape, weight, bias, attrs)
    R = _relevance_like(A @ h.reshape(len(h), -1).T.astype(np.float64) + b[:, None], rng)
    got = explain_custom(model, x, R, rule)
    want = np.stack([rule_reference("gamma", A, b, hi.ravel().astype(np.float64), ri.astype(np.float64),
                                    eps=rule.stabilizer, gamma=gamma) for hi, ri in zip(h, R)]).reshape(x.shape)
    assert rel_l2(got, want) < 1e-5, rel_l2(got, want)
    compiled = compile_explainer(model, composite=composites.Uniform(rule), mode="custom")
    convs = [n for n in compiled.model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert len(convs) == 4  # the forward, the shared W+ Conv, and one transpose per branch
