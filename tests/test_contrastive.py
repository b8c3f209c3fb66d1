"""Contrastive mode (docs/rules.md): the pairwise difference layer, checked against numpy."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from reference import rule_reference

from onnxlrp import Explainer, composites, rules
from onnxlrp.errors import UnsupportedModelError


def _model(w1, b1, w2, b2):
    """x -> Gemm -> Relu -> Gemm -> Softmax."""
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in
             dict(w1=w1, b1=b1, w2=w2, b2=b2).items()]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="hidden"),
             helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["z"], transB=1, name="top"),
             helper.make_node("Softmax", ["z"], ["p"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w1.shape[1]])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _pairwise_reference(rule_name, w2, b2, a, c, **kw):
    """Relevance at the top layer's input for one sample, from docs/rules.md's formulas."""
    others = [k for k in range(len(b2)) if k != c]
    A = w2[c][None] - w2[others]
    bias = b2[c] - b2[others]
    z = A @ a + bias
    start = z * np.exp(-z) / np.exp(-z).sum()
    return rule_reference(rule_name, A, bias, a, start, **kw)


def test_through_a_hidden_layer_conserves_the_pairwise_start(rng):
    """Bias-free, LRP-0 everywhere: the input relevance sums to sum_c' R_(c,c')."""
    w1, w2 = rng.normal(size=(6, 4)), rng.normal(size=(5, 6))
    model = _model(w1, np.zeros(6), w2, np.zeros(5))
    x = rng.normal(size=(3, 4)).astype(np.float32)
    explainer = Explainer(model, composite=composites.Uniform(rules.Epsilon(0.0)))
    result = explainer.explain(x, mode="contrastive", target=np.array([0, 3, 4]))
    a = np.maximum(x.astype(np.float64) @ w1.T, 0)
    for i, c in enumerate([0, 3, 4]):
        z = (a[i] @ w2.T)[c] - np.delete(a[i] @ w2.T, c)
        start = z * np.exp(-z) / np.exp(-z).sum()
        np.testing.assert_allclose(result.relevance[i].sum(), start.sum(), rtol=1e-4)


def test_contrastive_on_a_single_dense_layer(rng):
    """x -> Gemm -> logits: the input relevance is the pairwise layer's, by hand."""
    w, b = rng.normal(size=(4, 6)), rng.normal(size=4)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["z"], transB=1, name="top")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w.astype(np.float32), "w"),
                               numpy_helper.from_array(b.astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.normal(size=(3, 6)).astype(np.float32)
    for rule_name, rule in [("epsilon", rules.Epsilon()), ("zplus", rules.ZPlus()), ("gamma", rules.Gamma())]:
        explainer = Explainer(model, composite=composites.LayerMap([("top*", rule)]))
        result = explainer.explain(x, mode="contrastive")   # predicted classes
        for i in range(3):
            c = int(result.target[i])
            want = _pairwise_reference(rule_name, w, b, x[i].astype(np.float64), c)
            np.testing.assert_allclose(result.relevance[i], want, rtol=1e-4, atol=1e-6)


def test_contrastive_needs_a_dense_layer_under_the_logits():
    """A conv classifier whose logits come from a GlobalAveragePool: no dense layer under them."""
    w = numpy_helper.from_array(np.ones((3, 2, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["g"]),
             helper.make_node("Flatten", ["g"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedModelError, match="contrastive"):
        Explainer(model).explain(np.ones((1, 2, 4, 4), np.float32), mode="contrastive")
