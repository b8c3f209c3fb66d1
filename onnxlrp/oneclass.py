"""One-class SVMs explained with OC-DTD (Kauffmann, Müller and Montavon, "Towards explaining anomalies: a
deep Taylor decomposition of one-class models", Pattern Recognition 101, 2020; docs/oneclass.md).

An skl2onnx export of scikit-learn's OneClassSVM is an `SVMRegressor` (ai.onnx.ml), perhaps after a
`Scaler` (a StandardScaler in a Pipeline). With the RBF kernel its decision function is
f(x) = sum_j a_j exp(-g ||x - u_j||^2) + b. libsvm's coefficients sum to A = nu * n; OC-DTD uses them
normalised, ã_j = a_j / A (the paper's one-class SVM, whose coefficients sum to 1), and rewrites the
model as an equivalent network (neuralization):

    distance layer   h_j(x) = ||x - u_j||^2 - log(ã_j) / g                      (>= ||x - u_j||^2)
    soft min-pooling o(x)   = -log(sum_j exp(-g h_j(x))) / g = smin_g{h_j},   f(x) = A exp(-g o(x)) + b

o(x), the outlier score, is a soft nearest-support-vector squared distance: o(x) >= 0 (the log of a convex
combination of values <= 1 is <= 0), and x is an outlier (f(x) < 0) when o(x) > log(-A / b) / g. Deep
Taylor decomposition of the pooling gives each support vector its soft-min share of the score,
R_j = o(x) exp(-g h_j) / sum_k exp(-g h_k), and of each distance neuron each feature its share of the
squared distance, R_i = sum_j R_j (x_i - u_ij)^2 / ||x - u_j||^2: every R_i >= 0 and sum_i R_i = o(x).
A support vector at x itself (||x - u_j||^2 within float32 round-off of 0, where that share is 0 / 0)
tells nothing about which feature is unusual: its R_j goes to the other support vectors in proportion to
their shares (our choice; all at x: an even split). A Scaler in front is an element-wise bijection: each
scaled feature's relevance is its raw feature's.
With the linear kernel f(x) = w.x + b, and o(x) = -f(x) is decomposed at one root point of the model,
x0 = -b w / ||w||^2 (o(x0) = 0): R_i = w_i (x0_i - x_i), which depends on x and adds up to o(x) exactly.

The neuralized network (standard ops) replaces the SVM in the explainer, so that its outputs (label,
scores) are computed by the very network that is explained.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .compiler.assemble import CompiledExplainer, write_metadata
from .errors import UnsupportedModelError
from .ops.context import Builder

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


def round_off_distance(p: dict, offset=None, scale=None) -> float:
    """The squared distance below which x is taken to be at a support vector: float32 round-off of the
    coordinates (those of a support vector, and the Scaler's, which computes x's in float32 while scikit-learn
    computed the support vectors' in float64), about 8 float32 ulps per feature."""
    size = np.abs(p["vectors"]).max(0)
    if offset is not None:
        size = size + np.abs(offset * scale)
    return float(((2.0 ** -20 * size) ** 2).sum())


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
    g = Builder()
    g.set_scope("ocdtd")
    x = g.op("Cast", [source], to=TensorProto.FLOAT)
    features = x
    if scaler is not None:
        offset, scale = scaler_parameters(scaler, width)
        features = g.op("Mul", [g.op("Sub", [x, g.const(offset)]), g.const(scale)])
    gamma = p["gamma"]
    if p["kernel"] == "RBF":
        total = float(p["coefficients"].sum())          # libsvm's nu * n
        share = p["coefficients"] / total               # ã_j, the paper's coefficients (they sum to 1)
        diff = g.op("Sub", [g.op("Unsqueeze", [features, g.ints([1])]), g.const(p["vectors"])])
        squares = g.op("Mul", [diff, diff])                                           # [N, J, d]
        distance = g.op("ReduceSum", [squares, g.ints([2])], keepdims=0)   # ||x - u_j||^2, [N, J]
        # o(x) = min_j d_j - log(sum_j ã_j exp(-g (d_j - min_k d_k))) / g: both terms >= 0 (the sum is a
        # convex combination of values <= 1, and >= the nearest vector's ã_j, so it cannot underflow)
        nearest = g.op("ReduceMin", [distance, g.ints([1])], keepdims=1)
        weights = g.op("Mul", [g.const(share), g.op("Exp", [g.op("Mul", [g.op("Sub", [distance, nearest]),
                                                                           g.const(-gamma)])])])
        pooled_sum = g.op("ReduceSum", [weights, g.ints([1])], keepdims=1)
        # exactly, -log(sum) >= 0; float32 may round the sum a few ulps above 1, hence the clamp at 0
        pooled = g.op("Max", [g.op("Div", [g.op("Log", [pooled_sum]), g.const(-gamma)]), g.const(0.0)])
        score = g.op("Add", [nearest, pooled])                                        # o(x) >= 0, [N, 1]
        # the model's f(x) = sum_j a_j exp(-g d_j) + b = exp(-g min_k d_k) A sum_j ã_j exp(-g (d_j - min_k d_k)) + b
        decision = g.op("Add", [g.op("Mul", [g.op("Exp", [g.op("Mul", [nearest, g.const(-gamma)])]),
                                             g.op("Mul", [pooled_sum, g.const(total)])]), g.const([p["intercept"]])])
        # relevance: the soft-min share of o(x) per support vector (shift-invariant: d_j in place of h_j), then
        # each feature's share of ||x - u_j||^2. A support vector at x (d_j within round-off of 0: 0 / 0) has no
        # direction: its share goes to the others (a large d_j drops it from the soft min); all at x: even split
        tolerance = round_off_distance(p, *(scaler_parameters(scaler, width) if scaler is not None else ()))
        at_x = g.op("LessOrEqual", [distance, g.const(tolerance)])
        dropped = g.op("Add", [distance, g.op("Where", [at_x, g.const(1e30), g.const(0.0)])])
        least = g.op("ReduceMin", [dropped, g.ints([1])], keepdims=1)
        kept = g.op("Mul", [g.const(share), g.op("Exp", [g.op("Mul", [g.op("Sub", [dropped, least]),
                                                                        g.const(-gamma)])])])
        per_vector = g.op("Mul", [g.op("Div", [kept, g.op("ReduceSum", [kept, g.ints([1])],
                                                                      keepdims=1)]), score])   # R_j, [N, J]
        safe = g.op("Unsqueeze", [g.op("Where", [at_x, g.const(1.0), distance]), g.ints([2])])
        shares = g.op("Where", [g.op("Unsqueeze", [at_x, g.ints([2])]), g.const(1.0 / width),
                                g.op("Div", [squares, safe])])
        per_unit = g.op("Unsqueeze", [per_vector, g.ints([2])])
        relevance = g.op("ReduceSum", [g.op("Mul", [shares, per_unit]), g.ints([1])], keepdims=0)
    else:
        # o(x) = -(w.x + b) at the root point x0 = -b w / ||w||^2 of the model (o(x0) = 0, the boundary point
        # nearest the origin, on the ray through the support vectors' centre w / A): o is linear, so
        # o(x) = sum_i w_i (x0_i - x_i) exactly, and each feature's term depends on x (docs/oneclass.md)
        w = p["coefficients"] @ p["vectors"]
        if not np.any(w):
            raise UnsupportedModelError(f"node '{svm.name}' (SVMRegressor) is a linear one-class SVM with weights 0: "
                                        "its score does not depend on the input, there is nothing to explain")
        root = -p["intercept"] * w / float(w @ w)
        decision = g.op("Add", [g.op("MatMul", [features, g.const(w[:, None])]), g.const([p["intercept"]])])
        score = g.op("Neg", [decision])
        relevance = g.op("Mul", [g.op("Sub", [g.const(root), features]), g.const(w)])
    # the SVM's own output, then what followed it (Cast, Sign, Cast: the scores and the label)
    g.op("Identity", [decision], output=svm.output[0])
    g.op("Reshape", [score, g.ints([-1])], output=OUTLIER_OUTPUT)
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
                              initializer=list(model.graph.initializer) + g.initializers)
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
