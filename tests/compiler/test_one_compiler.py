"""One compiler for every graph (docs/rules.md, "One compiler"): every composite compiles every graph, the
relevance form and the gradient form give the same numbers where the rules agree, declarations override
built-in handlers, standalone affine steps get Epsilon. Tiny models written as text; no torch."""
import numpy as np
import onnxruntime as ort
import pytest
import onnx
from onnx import numpy_helper, parser
from reference import jacobian_fd, rel_l2

from onnxlrp import Explainer, composites, rules
from onnxlrp.errors import OnnxLrpError
from onnxlrp.inspect import format_report, inspect_model


def _model(text, opset=18, **arrays):
    model = parser.parse_model(f'<ir_version: 8, opset_import: ["" : {opset}]>' + text)
    for name, value in arrays.items():
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
    return model


# a hybrid: a convolution with an unfolded BatchNorm after a ReLU, patches as tokens, LayerNorm, one attention
# head with a residual join, mean over tokens, a dense head
HYBRID = """g (float[N, 2, 4, 4] x) => (float[N, 3] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, wc, bc)
    r = Relu (c)
    n = BatchNormalization (r, s, t, m, v)
    f = Reshape (n, shape)
    tokens = Transpose <perm = [0, 2, 1]> (f)
    ln = LayerNormalization <axis = -1> (tokens, lw, lb)
    q = MatMul (ln, wq)
    k = MatMul (ln, wk)
    vv = MatMul (ln, wv)
    kt = Transpose <perm = [0, 2, 1]> (k)
    scores = MatMul (q, kt)
    p = Softmax <axis = -1> (scores)
    o = MatMul (p, vv)
    h = Add (o, tokens)
    pooled = ReduceMean <keepdims = 0> (h, axes)
    y = Gemm <transB = 1> (pooled, wd, bd)
}"""


def _hybrid(rng):
    weights = dict(wc=rng.normal(size=(4, 2, 3, 3)), bc=rng.normal(size=4) * 0.1, s=rng.uniform(0.5, 2, 4),
                   t=rng.normal(size=4), m=rng.normal(size=4) * 0.1, v=rng.uniform(0.5, 2, 4),
                   lw=rng.uniform(0.5, 1.5, 4), lb=rng.normal(size=4) * 0.1, wq=rng.normal(size=(4, 4)),
                   wk=rng.normal(size=(4, 4)), wv=rng.normal(size=(4, 4)), wd=rng.normal(size=(3, 4)),
                   bd=rng.normal(size=3) * 0.1)
    model = _model(HYBRID, **weights)
    model.graph.initializer.extend([numpy_helper.from_array(np.array([0, 4, 16], np.int64), "shape"),
                                    numpy_helper.from_array(np.array([1], np.int64), "axes")])
    return model


COMPOSITES = {
    "epsilon_plus_flat": composites.EpsilonPlusFlat(),
    "epsilon_gamma_box": composites.EpsilonGammaBox(low=-3.0, high=3.0),
    "epsilon_alpha2_beta1": composites.EpsilonAlpha2Beta1(),
    "lrp0": composites.Uniform(rules.LRP0()),
    "attn_lrp": composites.AttnLRP(),
    "cp_lrp": composites.CPLRP(),
    "attn_lrp_gamma": composites.AttnLRP(linear=rules.Gamma(gamma=0.25)),
}


@pytest.mark.parametrize("name", list(COMPOSITES))
def test_every_composite_compiles_a_hybrid_and_reproduces_its_outputs(name, rng):
    model = _hybrid(rng)
    x = rng.normal(size=(3, 2, 4, 4)).astype(np.float32)
    res = Explainer(model, composite=COMPOSITES[name]).explain(x)
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(res.outputs[0], expected, rtol=1e-5, atol=1e-6)
    assert res.relevance.shape == x.shape and np.all(np.isfinite(res.relevance))
    assert np.all(np.abs(res.relevance).sum(axis=(1, 2, 3)) > 0)


def test_the_relevance_form_and_the_gradient_form_agree_where_the_rules_do(rng):
    """Epsilon on every layer with the blocks' default rules, computed in relevance form (R through each
    node) and in LXT's gradient form (AttnLRP: g through each node, R = x * g at the input): the same rules,
    so the same numbers up to the stabiliser."""
    model = _hybrid(rng)
    x = rng.normal(size=(4, 2, 4, 4)).astype(np.float32)
    relevance_form = composites.Uniform(rules.Epsilon(epsilon=1e-9))
    gradient_form = composites.LayerMap([("gate", rules.Constant())], base=composites.AttnLRP())
    a = Explainer(model, composite=relevance_form).explain(x, target=1).relevance
    b = Explainer(model, composite=gradient_form).explain(x, target=1).relevance
    assert rel_l2(a, b) < 1e-4


def test_attn_lrp_on_a_cnn_is_epsilon_on_every_layer(models_dir, rng):
    """AttnLRP on a ResNet: Epsilon on every convolution and dense layer in gradient form, the residual joins'
    and the pools' unchanged gradient; the relevance-form Epsilon composite gives the same numbers."""
    x = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    a = Explainer(models_dir / "tiny_resnet.onnx", composite="attn_lrp").explain(x, target=[1, 4]).relevance
    tiny = rules.Norm(stabilizer=1e-9)   # the gradient form has no stabiliser: the same in relevance form
    epsilon = composites.LayerMap([("join", tiny), ("pool", tiny)], base=composites.Uniform(rules.Epsilon(1e-9)))
    b = Explainer(models_dir / "tiny_resnet.onnx", composite=epsilon).explain(x, target=[1, 4]).relevance
    assert rel_l2(a, b) < 1e-4


REPVGG = """g (float[N, 2, 4, 4] x) => (float[N, 3] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, wc, bc)
    i = BatchNormalization (x, s, t, m, v)
    a = Add (c, i)
    r = Relu (a)
    f = Flatten (r)
    y = Gemm <transB = 1> (f, wd, bd)
}"""


def test_an_unfolded_batchnorm_is_an_affine_layer_with_the_epsilon_rule(rng):
    """RepVGG's identity branch: a BatchNorm no convolution absorbs. Its shift must absorb its share, never
    become relevance: LRP-0 equals gradient x input exactly (a ReLU net), which passing the BatchNorm's output
    relevance through (R_x = R_y, shift included) breaks."""
    model = _model(REPVGG, wc=rng.normal(size=(2, 2, 3, 3)), bc=rng.normal(size=2), s=rng.uniform(0.5, 2, 2),
                   t=rng.normal(size=2) * 3, m=rng.normal(size=2), v=rng.uniform(0.5, 2, 2),
                   wd=rng.normal(size=(3, 32)), bd=rng.normal(size=3))
    x = rng.normal(size=(1, 2, 4, 4)).astype(np.float32)
    ex = Explainer(model, composite=composites.Uniform(rules.LRP0()))
    res = ex.explain(x, target=0)
    assert [rule for _, op, rule in ex.compiled().layer_rules if op == "BatchNormalization"] == [
        "affine: Epsilon(epsilon=1e-06, zero_bias=False)"]
    gradient = jacobian_fd(model, x.astype(np.float64))[0].reshape(x.shape)
    assert rel_l2(res.relevance, x * gradient) < 1e-4


GATED = """g (float[N, 4] x) => (float[N, 4] y) {
    a = MatMul (x, wa)
    b = MatMul (x, wb)
    s = Sigmoid (b)
    y = Mul (a, s)
}"""


@pytest.mark.parametrize("composite", ["epsilon_plus", "attn_lrp", "cp_lrp"])
def test_a_declaration_overrides_the_built_in_handler_in_every_composite(composite, rng, capsys):
    """Mul has a handler (a gate: held constant or shared); declared Pass by op type or by node name, it passes
    relevance to its first operand unchanged, whatever the composite, and inspect says so."""
    model = _model(GATED, wa=rng.normal(size=(4, 4)), wb=rng.normal(size=(4, 4)))
    x = rng.normal(size=(2, 4)).astype(np.float32)
    base = composites.get(composite)
    for key in ("Mul", "Mul_3"):
        declared = composites.LayerMap([(key, rules.Pass())], base=base)
        res = Explainer(model, composite=declared).explain(x, mode="custom", output_relevance=np.ones((2, 4), "f"))
        wa = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "wa"))
        a = x @ wa
        # R_a = 1 everywhere, then the dense layer's rule: Epsilon in each of these composites
        expected = x * (wa @ (1.0 / (a + 1e-6 * np.where(a >= 0, 1, -1))).T).T
        np.testing.assert_allclose(res.relevance, expected, rtol=1e-4, atol=1e-5)
        report = inspect_model(model, composite=declared)
        assert any(row.node == "Mul_3" and "Pass()" in row.treatment and "(declared)" in row.treatment
                   for row in report.rows), format_report(report)


DETECTOR = """g (float[N, 4] x) => (float[N, 6, 3] y) {
    features = MatMul (x, w)
    grid = Reshape (features, shape)
    boxes_raw = Slice (grid, zero, four, one)
    boxes = Cos (boxes_raw)
    scores_raw = Slice (grid, four, six, one)
    scores = Sigmoid (scores_raw)
    y = Concat <axis = 1> (boxes, scores)
}"""


def test_a_detectors_box_branch_needs_no_rule_when_a_class_score_is_explained(rng):
    """[N, 4 + C, boxes] (YOLOv8's layout): the box coordinates come through an op onnxlrp has no rule for
    (Cos here); explaining the class-c score of one box sends nothing there, so it compiles; a selection that
    covers the boxes too is refused at that op."""
    model = _model(DETECTOR, w=rng.normal(size=(4, 18)))
    model.graph.initializer.extend([numpy_helper.from_array(np.array(v, np.int64), name) for name, v in
                                    [("shape", [0, 6, 3]), ("zero", [0]), ("four", [4]), ("six", [6]), ("one", [1])]])
    x = rng.normal(size=(2, 4)).astype(np.float32)
    ex = Explainer(model, composite=composites.Uniform(rules.LRP0()))
    res = ex.explain(x, box=[2, 0], target=[1, 0], layout="attributes_first")
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w"))
    for i, (box, cls) in enumerate([(2, 1), (0, 0)]):
        column = (4 + cls) * 3 + box                   # the logit feeding that score
        score = res.outputs[0][i, 4 + cls, box]
        np.testing.assert_allclose(res.relevance[i], x[i] * w[:, column] * score / (x[i] @ w[:, column]),
                                   rtol=1e-4, atol=1e-6)
    with pytest.raises(OnnxLrpError, match="Cos"):
        ex.explain(x, mode="select", output_relevance=np.ones((2, 6, 3), np.float32))


def test_the_explainer_has_no_node_whose_outputs_nothing_reads():
    """onnxruntime runs such nodes all the same; one left at the end of BERT's explainer kept 500 MB more
    alive at batch 8 (docs/performance.md)."""
    from onnxlrp.compiler import compile_explainer
    from onnxlrp.compiler.assemble import live_nodes
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[N, 3] y) {
            h = MatMul(x, w1)
            a = Relu(h)
            y = MatMul(a, w2)
        }""")
    rng = np.random.default_rng(0)
    model.graph.initializer.extend([onnx.numpy_helper.from_array(rng.normal(size=(4, 5)).astype(np.float32), "w1"),
                                    onnx.numpy_helper.from_array(rng.normal(size=(5, 3)).astype(np.float32), "w2")])
    for composite in ("epsilon_plus_flat", "attn_lrp"):
        graph = compile_explainer(model, composite=composite).model.graph
        read = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
        assert all(any(o in read for o in node.output) for node in graph.node), composite
    # the pruning keeps what subgraphs read from the outer scope
    inner = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["outer"], ["z"])], "body", [],
                                   [onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None)])
    nodes = [onnx.helper.make_node("Relu", ["x"], ["outer"]), onnx.helper.make_node("Relu", ["x"], ["dead"]),
             onnx.helper.make_node("If", ["c"], ["out"], then_branch=inner, else_branch=inner)]
    assert [n.output[0] for n in live_nodes(nodes, {"out"})] == ["outer", "out"]
