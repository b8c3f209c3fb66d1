"""One-class SVMs explained with OC-DTD (Kauffmann, Müller and Montavon, "Towards explaining anomalies: a
deep Taylor decomposition of one-class models", Pattern Recognition 101, 2020; docs/oneclass.md).

An skl2onnx export of scikit-learn's OneClassSVM is an `SVMRegressor` (ai.onnx.ml), perhaps after a
`Scaler` (a StandardScaler in a Pipeline). With the RBF kernel its decision function is
f(x) = sum_j a_j exp(-g ||x - u_j||^2) + b. OC-DTD rewrites it as an equivalent network (neuralization):

    distance layer   h_j(x) = ||x - u_j||^2 - log(a_j) / g
    soft min-pooling o(x)   = -log(sum_j exp(-g h_j(x))) / g = smin_g{h_j},   f(x) = exp(-g o(x)) + b

o(x), the outlier score, grows with the distance to the support vectors (a soft nearest-neighbour
distance at temperature 1/g); x is an outlier (f(x) < 0) when o(x) > -log(-b) / g. Deep Taylor
decomposition of the pooling gives each support vector its soft-min share of the score,
R_j = o(x) exp(-g h_j) / sum_k exp(-g h_k), and of each distance neuron each feature its share of the
squared distance, R_i = sum_j R_j (x_i - u_ij)^2 / ||x - u_j||^2, so that sum_i R_i = o(x) exactly (at
x = u_j, where that share is 0 / 0, the d features share R_j evenly: our choice, the paper is silent).
A Scaler in front is an element-wise bijection: each scaled feature's relevance is its raw feature's.
With the linear kernel f(x) = w.x + b, and o(x) = -(w.x + b) is explained by the w^2-rule of deep Taylor
decomposition (a root point along w): R_i = o(x) w_i^2 / ||w||^2.

The neuralized network (standard ops) replaces the SVM in the explainer, so that its outputs (label,
scores) are computed by the very network that is explained.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .compiler.assemble import CompiledExplainer, write_metadata
from .errors import UnsupportedModelError

ML = "ai.onnx.ml"
OUTLIER_OUTPUT = "outlier_score"


def find_one_class_svm(model: onnx.ModelProto):
    """The SVMRegressor node (and the Scaler in front of it, if any), or None if the model has none."""
    svm = next((n for n in model.graph.node if n.op_type == "SVMRegressor" and n.domain == ML), None)
    if svm is None:
        return None
    producer = {o: n for n in model.graph.node for o in n.output}
    scaler = producer.get(svm.input[0])
    if scaler is not None and not (scaler.op_type == "Scaler" and scaler.domain == ML):
        raise UnsupportedModelError(f"node '{svm.name}' (SVMRegressor) reads '{svm.input[0]}', made by "
                                    f"{scaler.op_type}; onnxlrp explains a one-class SVM on its input, or after a "
                                    "StandardScaler (ai.onnx.ml Scaler)")
    return svm, scaler


def _attrs(node) -> dict:
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def svm_parameters(svm) -> dict:
    """The SVM as numbers: support vectors U [J, d], coefficients a [J], intercept b, kernel, gamma."""
    a = _attrs(svm)
    kernel = a.get("kernel_type", "LINEAR").upper()
    if kernel not in ("RBF", "LINEAR"):
        raise UnsupportedModelError(f"node '{svm.name}' (SVMRegressor) has a {kernel} kernel; OC-DTD explains "
                                    "one-class SVMs with the RBF (or linear) kernel")
    if a.get("post_transform", "NONE") != "NONE":
        raise UnsupportedModelError(f"node '{svm.name}' (SVMRegressor) has post_transform {a['post_transform']}")
    coefficients = np.asarray(a["coefficients"], np.float64)
    vectors = np.asarray(a["support_vectors"], np.float64).reshape(len(coefficients), -1)
    intercept = float(np.ravel(a.get("rho", [0.0]))[0])
    gamma = float(a.get("kernel_params", [0.0])[0])
    if kernel == "RBF" and (gamma <= 0 or np.any(coefficients <= 0)):
        raise UnsupportedModelError(f"node '{svm.name}' is not a one-class SVM (its RBF coefficients must be positive "
                                    "and gamma > 0: a two-class or regression SVM is not explained by OC-DTD)")
    return {"vectors": vectors, "coefficients": coefficients, "intercept": intercept, "kernel": kernel,
            "gamma": gamma}


def scaler_parameters(scaler, width: int):
    a = _attrs(scaler)
    offset = np.broadcast_to(np.asarray(a.get("offset", [0.0]), np.float64), (width,))
    scale = np.broadcast_to(np.asarray(a.get("scale", [1.0]), np.float64), (width,))
    return offset, scale


def outlier_score(x: np.ndarray, p: dict) -> np.ndarray:
    """o(x) in float64 (the neuralized network, for reference)."""
    if p["kernel"] == "LINEAR":
        return -(x @ (p["coefficients"] @ p["vectors"]) + p["intercept"])
    h = ((x[:, None, :] - p["vectors"][None]) ** 2).sum(-1) - np.log(p["coefficients"]) / p["gamma"]
    m = h.min(1, keepdims=True)
    return (m - np.log(np.exp(-p["gamma"] * (h - m)).sum(1, keepdims=True)) / p["gamma"])[:, 0]


class _Graph:
    def __init__(self):
        self.nodes, self.inits, self.k = [], [], 0

    def const(self, value, dtype=np.float32) -> str:
        self.k += 1
        name = f"ocdtd/const/{self.k}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type, inputs, output=None, **attrs) -> str:
        self.k += 1
        out = output or f"ocdtd/{self.k}_{op_type.lower()}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"ocdtd/{op_type}_{self.k}", **attrs))
        return out


def compile_oneclass_explainer(model: onnx.ModelProto, mode: str = "logit"):
    """The explainer of a one-class SVM: the neuralized network, its outlier score and OC-DTD relevance."""
    if mode != "logit":
        raise UnsupportedModelError(f"mode '{mode}': a one-class SVM is explained from its outlier score only "
                                    "(mode 'logit', the default)")
    found = find_one_class_svm(model)
    svm, scaler = found
    p = svm_parameters(svm)
    source = scaler.input[0] if scaler is not None else svm.input[0]
    inputs = [v for v in model.graph.input if v.name == source]
    if not inputs:
        raise UnsupportedModelError(f"the one-class SVM reads '{source}', which is not a graph input")
    width = p["vectors"].shape[1]
    g = _Graph()
    x = g.op("Cast", [source], to=TensorProto.FLOAT)
    features = x
    if scaler is not None:
        offset, scale = scaler_parameters(scaler, width)
        features = g.op("Mul", [g.op("Sub", [x, g.const(offset)]), g.const(scale)])
    gamma = p["gamma"]
    if p["kernel"] == "RBF":
        diff = g.op("Sub", [g.op("Unsqueeze", [features, g.const([1], np.int64)]), g.const(p["vectors"])])
        squares = g.op("Mul", [diff, diff])                                        # [N, J, d]
        distance = g.op("ReduceSum", [squares, g.const([2], np.int64)], keepdims=0)   # ||x - u_j||^2
        h = g.op("Sub", [distance, g.const(np.log(p["coefficients"]) / gamma)])      # distance layer
        least = g.op("ReduceMin", [h, g.const([1], np.int64)], keepdims=1)
        weights = g.op("Exp", [g.op("Mul", [g.op("Sub", [h, least]), g.const(-gamma)])])
        total = g.op("ReduceSum", [weights, g.const([1], np.int64)], keepdims=1)
        score = g.op("Sub", [least, g.op("Div", [g.op("Log", [total]), g.const(gamma)])])   # [N, 1] soft min
        decision = g.op("Add", [g.op("Exp", [g.op("Mul", [score, g.const(-gamma)])]), g.const([p["intercept"]])])
        # relevance: the soft-min share of o(x) per support vector, then each feature's share of the distance
        per_vector = g.op("Mul", [g.op("Div", [weights, total]), score])            # R_j, [N, J]
        # each feature's share of ||x - u_j||^2; at x = u_j (0 / 0) the features share R_j evenly
        at_vector = g.op("Unsqueeze", [g.op("Equal", [distance, g.const(0.0)]), g.const([2], np.int64)])
        safe = g.op("Unsqueeze", [g.op("Max", [distance, g.const(1e-30)]), g.const([2], np.int64)])
        shares = g.op("Where", [at_vector, g.const(1.0 / width), g.op("Div", [squares, safe])])
        per_unit = g.op("Unsqueeze", [per_vector, g.const([2], np.int64)])
        relevance = g.op("ReduceSum", [g.op("Mul", [shares, per_unit]), g.const([1], np.int64)], keepdims=0)
    else:
        w = p["coefficients"] @ p["vectors"]
        decision = g.op("Add", [g.op("MatMul", [features, g.const(w[:, None])]), g.const([p["intercept"]])])
        score = g.op("Neg", [decision])
        relevance = g.op("Mul", [score, g.const(w ** 2 / max(float(w @ w), 1e-300))])   # w^2-rule
    # the SVM's own output, then what followed it (Cast, Sign, Cast: the scores and the label)
    g.op("Identity", [decision], output=svm.output[0])
    g.op("Reshape", [score, g.const([-1], np.int64)], output=OUTLIER_OUTPUT)
    g.op("Identity", [relevance], output=f"relevance_{source}")
    after = [n for n in model.graph.node if n is not svm and n is not scaler]
    nodes = g.nodes + after
    outputs = list(model.graph.output) + [
        helper.make_tensor_value_info(OUTLIER_OUTPUT, TensorProto.FLOAT, ["batch"]),
        helper.make_tensor_value_info(f"relevance_{source}", TensorProto.FLOAT, ["batch", width])]
    for value in list(inputs) + outputs:
        dims = value.type.tensor_type.shape.dim
        if len(dims) and not dims[0].dim_param:
            dims[0].Clear()
            dims[0].dim_param = "batch"
    graph = helper.make_graph(nodes, "onnxlrp_oneclass_explainer", inputs, outputs,
                              initializer=list(model.graph.initializer) + g.inits)
    opsets = [o for o in model.opset_import if o.domain not in ("", "ai.onnx", ML)] + [helper.make_opsetid("", 18)]
    if any(n.domain == ML for n in nodes):
        opsets.append(helper.make_opsetid(ML, 3))
    explainer = helper.make_model(graph, opset_imports=opsets, producer_name="onnxlrp")
    explainer.ir_version = 8
    names = next((e.value for e in model.metadata_props if e.key == "feature_names"), None)
    if names:
        explainer.metadata_props.add(key="feature_names", value=names)
    compiled = CompiledExplainer(
        model=explainer, inputs=[source], target_input=None, custom_input=None,
        output_names=[o.name for o in model.graph.output], relevance_outputs={source: f"relevance_{source}"},
        target_output=None, logits=OUTLIER_OUTPUT, n_classes=0, start_shape=(), score_output=OUTLIER_OUTPUT,
        layer_rules=[(svm.name, "SVMRegressor", f"OC-DTD ({p['kernel']} kernel, gamma {gamma:g}, "
                      f"{len(p['coefficients'])} support vectors)")])
    write_metadata(compiled, "OC-DTD", mode)
    return compiled
