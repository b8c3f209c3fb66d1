"""Independent references for the tests: dense Jacobians and the docs/rules.md formulas in float64 numpy.

Dense matrices come from onnx's own reference evaluator (pure numpy, float64), never from onnxlrp's
relevance graph, so the tests compare two independent computations.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator


def single_op_model(op_type, x_shape, inits: dict, attrs: dict, dtype=TensorProto.FLOAT, y_shape=None, opset=17,
                    n_outputs=1):
    """x -> op(x, *inits) -> Flatten -> logits, so that the op's output relevance can be set directly
    (several outputs are flattened and concatenated)."""
    init_names = list(inits)
    outputs = ["y"] if n_outputs == 1 else [f"y{j}" for j in range(n_outputs)]
    nodes = [helper.make_node(op_type, ["x"] + init_names, outputs, name="layer", **attrs)]
    if n_outputs == 1:
        nodes.append(helper.make_node("Flatten", ["y"], ["logits"], name="flatten", axis=1))
    else:
        nodes += [helper.make_node("Flatten", [y], [f"{y}_flat"], axis=1) for y in outputs]
        nodes.append(helper.make_node("Concat", [f"{y}_flat" for y in outputs], ["logits"], axis=1))
    np_dtype = np.float32 if dtype == TensorProto.FLOAT else np.float64
    initializers = [numpy_helper.from_array(np.asarray(v, dtype=np_dtype if np.asarray(v).dtype.kind == "f" else None), k)
                    for k, v in inits.items()]
    graph = helper.make_graph(nodes, "single", [helper.make_tensor_value_info("x", dtype, ["N"] + list(x_shape[1:]))],
                              [helper.make_tensor_value_info("logits", dtype, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    return model


def dense_model(layers):
    """x -> Gemm (-> Relu -> Gemm ...) -> logits, from [(W, b), ...]."""
    nodes, inits, current = [], [], "x"
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"), numpy_helper.from_array(b.astype(np.float32), f"b{i}")]
        out = "logits" if i == len(layers) - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out], transB=1, name=f"dense{i}"))
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"], name=f"relu{i}"))
            current = f"r{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", layers[0][0].shape[1]])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def explain_custom(model, x: np.ndarray, relevance: np.ndarray, rule=None) -> np.ndarray:
    """onnxlrp's input relevance for `relevance` put on the model's output, one rule on every layer
    (default Epsilon)."""
    from onnxlrp import Explainer, composites, rules

    explainer = Explainer(model, composite=composites.Uniform(rule if rule is not None else rules.Epsilon()))
    return explainer.explain(x, mode="custom", output_relevance=relevance).relevance


def run_reference(model: onnx.ModelProto, x: np.ndarray, output: str | None = None) -> np.ndarray:
    """Run a model in float64 with onnx.reference (initialisers and input cast to float64)."""
    model64 = to_float64(model)
    evaluator = ReferenceEvaluator(model64)
    name = output or model64.graph.output[0].name
    return evaluator.run([name], {model64.graph.input[0].name: x.astype(np.float64)})[0]


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for init in m.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
    for value in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in m.graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.DOUBLE
            if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == TensorProto.FLOAT:
                attribute.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attribute.t).astype(np.float64)))
    return m


def dense_linear(op_type, x_shape, weight, bias, attrs):
    """(A, b) with layer(x) = A @ x.ravel() + b for one sample."""
    inits = {"w": weight}
    if bias is not None:
        inits["b"] = bias
    model = single_op_model(op_type, x_shape, inits, attrs)
    n_in = int(np.prod(x_shape[1:]))
    basis = np.eye(n_in).reshape((n_in,) + tuple(x_shape[1:]))
    zero = np.zeros((1,) + tuple(x_shape[1:]))
    offset = run_reference(model, zero)[0]
    columns = run_reference(model, basis) - offset
    return columns.T, offset


def stab(u, eps):
    return u + eps * np.where(u >= 0, 1.0, -1.0)


def pos(a):
    return np.clip(a, 0, None)


def neg(a):
    return np.clip(a, None, 0)


def rule_reference(rule_name, A, b, x, R, A_ones=None, eps=1e-6, gamma=0.25, low=None, high=None,
                   alpha=2.0, beta=1.0, zero_bias=False):
    """docs/rules.md formulas on a dense layer; x and R are flat vectors for one sample."""
    z_original = A @ x + b  # Gamma's gate keeps the bias even with zero_bias
    if zero_bias:
        b = np.zeros_like(b)
    xp, xn = pos(x), neg(x)
    if rule_name == "epsilon":
        return x * (A.T @ (R / stab(A @ x + b, eps)))
    if rule_name == "zplus":
        s = R / stab(pos(A) @ xp + neg(A) @ xn + pos(b), eps)
        return xp * (pos(A).T @ s) + xn * (neg(A).T @ s)
    if rule_name == "alphabeta":
        s_a = R / stab(pos(A) @ xp + neg(A) @ xn + pos(b), eps)
        s_b = R / stab(neg(A) @ xp + pos(A) @ xn + neg(b), eps)
        return (alpha * (xp * (pos(A).T @ s_a) + xn * (neg(A).T @ s_a))
                - beta * (xp * (neg(A).T @ s_b) + xn * (pos(A).T @ s_b)))
    if rule_name == "gamma":
        up, down = A + gamma * pos(A), A + gamma * neg(A)
        bu, bd = b + gamma * pos(b), b + gamma * neg(b)
        s_p = (z_original > 0) * R / stab(up @ xp + down @ xn + bu, eps)
        s_n = (z_original < 0) * R / stab(down @ xp + up @ xn + bd, eps)
        return xp * (up.T @ s_p + down.T @ s_n) + xn * (down.T @ s_p + up.T @ s_n)
    if rule_name == "zbox":
        s = R / stab(A @ x - pos(A) @ low - neg(A) @ high, eps)
        return x * (A.T @ s) - low * (pos(A).T @ s) - high * (neg(A).T @ s)
    if rule_name == "wsquare":
        s = R / stab((A * A) @ np.ones_like(x) + b * b, eps)
        return (A * A).T @ s
    if rule_name == "flat":
        s = R / stab(A_ones @ np.ones_like(x), eps)
        return A_ones.T @ s
    raise ValueError(rule_name)


def jacobian_fd(model: onnx.ModelProto, x: np.ndarray, output: str | None = None, h: float = 1e-6,
                indices=None) -> np.ndarray:
    """Central finite differences in float64: J[o, i] for one sample x (with batch axis 1), for all
    input coordinates or only `indices` (flat)."""
    n_in = x[0].size
    indices = np.arange(n_in) if indices is None else np.asarray(indices)
    eye = np.zeros((len(indices), n_in))
    eye[np.arange(len(indices)), indices] = h
    eye = eye.reshape((len(indices),) + x.shape[1:])
    columns = []
    for start in range(0, len(indices), 256):
        chunk = eye[start:start + 256]
        plus = run_reference(model, x + chunk, output)
        minus = run_reference(model, x - chunk, output)
        columns.append((plus - minus).reshape(len(chunk), -1) / (2 * h))
    return np.concatenate(columns).T


def rel_l2(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
