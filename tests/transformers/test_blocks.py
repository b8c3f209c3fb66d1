"""Each transformer block's modified gradient against a dense-Jacobian numpy reference (docs/rules.md,
"Transformers"): R_x = x * (J^T g), with J the Jacobian of the rule (softmax unchanged, LayerNorm with
sigma constant, identity rule, uniform rule). Tiny models are built from text."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxlrp import Explainer

HEADER = '<ir_version: 8, opset_import: ["" : {opset}]>'


def _model(text: str, opset: int = 17, **weights) -> onnx.ModelProto:
    model = onnx.parser.parse_model(HEADER.format(opset=opset) + text)
    for name, value in weights.items():
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
    return model


def _explain(model, x, target, composite="attn_lrp"):
    return Explainer(model, composite=composite).explain(x, target=target)


@pytest.mark.parametrize("masked", [np.finfo(np.float32).min, -np.inf], ids=["finfo_min", "minus_inf"])
def test_softmax_with_masked_entries_is_its_gradient_and_never_nan(masked, rng):
    mask = np.zeros((1, 6), np.float32)
    mask[0, [1, 4]] = masked
    model = _model("""g (float[N, 6] x) => (float[N, 6] y) {
        m = Add(x, mask)
        p = Softmax<axis = -1>(m)
        y = Mul(p, one)
    }""", mask=mask, one=1.0)   # (a Softmax right at the output would not be explained: docs/rules.md)
    x = rng.normal(size=(3, 6)).astype(np.float32)
    res = _explain(model, x, target=2)
    for i in range(3):
        s = np.exp(x[i] + mask[0] - (x[i] + mask[0]).max())
        s /= s.sum()
        jacobian = np.diag(s) - np.outer(s, s)
        np.testing.assert_allclose(res.relevance[i], x[i] * jacobian[2], rtol=1e-5, atol=1e-7)
    assert np.all(np.isfinite(res.relevance)) and np.all(res.relevance[:, [1, 4]] == 0)


LAYER_NORM_OP = """g (float[N, 5] x) => (float[N, 5] y) {
    y = LayerNormalization<axis = -1, epsilon = 0.001>(x, w, b)
}"""
# TorchScript's opset < 17 export: ReduceMean / Sub / Pow / ReduceMean / Add / Sqrt / Div / Mul / Add
LAYER_NORM_CHAIN = """g (float[N, 5] x) => (float[N, 5] y) {
    mean = ReduceMean<axes = [-1]>(x)
    d = Sub(x, mean)
    sq = Pow(d, two)
    var = ReduceMean<axes = [-1]>(sq)
    ve = Add(var, eps)
    sigma = Sqrt(ve)
    n = Div(d, sigma)
    s = Mul(n, w)
    y = Add(s, b)
}"""
# opset 18: ReduceMean takes its axes as an input
LAYER_NORM_CHAIN_18 = LAYER_NORM_CHAIN.replace("ReduceMean<axes = [-1]>(x)", "ReduceMean(x, axes)").replace(
    "ReduceMean<axes = [-1]>(sq)", "ReduceMean(sq, axes)")


@pytest.mark.parametrize("text,opset", [(LAYER_NORM_OP, 17), (LAYER_NORM_CHAIN, 14), (LAYER_NORM_CHAIN_18, 18)])
def test_layer_norm_holds_sigma_constant(text, opset, rng):
    w, b = rng.normal(size=5).astype(np.float32), rng.normal(size=5).astype(np.float32)
    extra = {"two": 2.0, "eps": 1e-3} if "Pow" in text else {}
    model = _model(text, opset, w=w, b=b, **extra)
    if opset == 18:
        model.graph.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "axes"))
    x = rng.normal(size=(2, 5)).astype(np.float32)
    res = _explain(model, x, target=3)
    for i in range(2):
        sigma = np.sqrt(x[i].var() + 1e-3)
        jacobian = np.diag(w / sigma) @ (np.eye(5) - 1 / 5)   # d y / d x with sigma constant
        np.testing.assert_allclose(res.relevance[i], x[i] * jacobian[3], rtol=1e-4, atol=1e-6)


# LLaMA-style RMSNorm: x * Reciprocal(Sqrt(mean(x^2) + eps)) * w
RMS_NORM = """g (float[N, 5] x) => (float[N, 5] y) {
    sq = Pow(x, two)
    ms = ReduceMean<axes = [-1]>(sq)
    me = Add(ms, eps)
    rms = Sqrt(me)
    inv = Reciprocal(rms)
    n = Mul(x, inv)
    y = Mul(n, w)
}"""


def test_rms_norm_holds_the_rms_constant(rng):
    w = rng.normal(size=5).astype(np.float32)
    model = _model(RMS_NORM, w=w, two=2.0, eps=1e-3)
    x = rng.normal(size=(2, 5)).astype(np.float32)
    res = _explain(model, x, target=1)
    for i in range(2):
        rms = np.sqrt((x[i] ** 2).mean() + 1e-3)
        expected = np.zeros(5)
        expected[1] = x[i, 1] * w[1] / rms        # y = w x / rms, linear and diagonal with rms constant
        np.testing.assert_allclose(res.relevance[i], expected, rtol=1e-5, atol=1e-7)


ERF_GELU = """g (float[N, 4] x) => (float[N, 4] y) {
    h = Div(x, root2)
    e = Erf(h)
    one_e = Add(e, one)
    half = Mul(x, half_c)
    y = Mul(half, one_e)
}"""
TANH_GELU = """g (float[N, 4] x) => (float[N, 4] y) {
    cube = Pow(x, three)
    c = Mul(cube, k)
    inner = Add(x, c)
    scaled = Mul(inner, s)
    t = Tanh(scaled)
    one_t = Add(t, one)
    half = Mul(x, half_c)
    y = Mul(half, one_t)
}"""
SILU = """g (float[N, 4] x) => (float[N, 4] y) {
    sig = Sigmoid(x)
    y = Mul(x, sig)
}"""


@pytest.mark.parametrize("text", [ERF_GELU, TANH_GELU, SILU], ids=["erf_gelu", "tanh_gelu", "silu"])
def test_x_times_h_of_x_is_one_non_linearity_with_the_identity_rule(text, rng):
    weights = {"root2": np.sqrt(2.0), "one": 1.0, "half_c": 0.5, "three": 3.0, "k": 0.044715,
               "s": np.sqrt(2 / np.pi)}
    used = {name for line in text.splitlines() for name in line.replace("(", ",").replace(")", ",").split(",")}
    model = _model(text, **{k: v for k, v in weights.items() if k in {u.strip() for u in used}})
    x = rng.normal(size=(2, 4)).astype(np.float32)
    res = _explain(model, x, target=1)
    y = res.outputs[0]
    expected = np.zeros_like(x)
    expected[:, 1] = x[:, 1] * y[:, 1] / (x[:, 1] + 1e-10)   # R_x = R_y: the output itself at the target
    np.testing.assert_allclose(res.relevance, expected, rtol=1e-5, atol=1e-7)


BILINEAR = """g (float[N, 3] x) => (float[N, 4] y) {
    a = MatMul(x, w1)
    c = MatMul(x, w2)
    y = Mul(a, c)
}"""


def test_products_of_two_computed_tensors_share_the_gradient_uniformly(rng):
    w1, w2 = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    x = rng.normal(size=(2, 3)).astype(np.float32)
    res = _explain(_model(BILINEAR, w1=w1, w2=w2), x, target=2)
    a, c = x @ w1, x @ w2
    for i in range(2):
        g = np.zeros(4)
        g[2] = 1
        gradient = 0.5 * w1 @ (g * c[i]) + 0.5 * w2 @ (g * a[i])
        np.testing.assert_allclose(res.relevance[i], x[i] * gradient, rtol=1e-5, atol=1e-7)


ATTENTION = """g (float[N, 4, 3] x) => (float[N, 12] y) {
    q = MatMul(x, wq)
    k = MatMul(x, wk)
    v = MatMul(x, wv)
    kt = Transpose<perm = [0, 2, 1]>(k)
    scores = MatMul(q, kt)
    p = Softmax<axis = -1>(scores)
    o = MatMul(p, v)
    y = Flatten(o)
}"""


def _attention_weights(rng):
    return {name: rng.normal(size=(3, 3)).astype(np.float32) for name in ("wq", "wk", "wv")}


def test_cp_lrp_holds_the_attention_probabilities_constant_and_conserves(rng):
    weights = _attention_weights(rng)
    x = rng.normal(size=(2, 4, 3)).astype(np.float32)
    res = _explain(_model(ATTENTION, **weights), x, target=7, composite="cp_lrp")
    for i in range(2):
        scores = (x[i] @ weights["wq"]) @ (x[i] @ weights["wk"]).T
        p = np.exp(scores - scores.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = np.zeros((4, 3))
        g[7 // 3, 7 % 3] = 1
        gradient = p.T @ g @ weights["wv"].T      # o = P x Wv with P constant
        np.testing.assert_allclose(res.relevance[i], x[i] * gradient, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res.relevance.sum(axis=(1, 2)), res.outputs[0][:, 7], rtol=1e-5)


def test_attn_lrp_halves_each_operand_of_both_products(rng):
    weights = _attention_weights(rng)
    x = rng.normal(size=(1, 4, 3)).astype(np.float64)
    res = _explain(_model(ATTENTION, **weights), x.astype(np.float32), target=5)
    wq, wk, wv = (weights[k].astype(np.float64) for k in ("wq", "wk", "wv"))

    def modified_gradient(x0):
        # g through o = P V (each half), P = softmax(S) (unchanged), S = Q K^T (each half)
        q, k, v = x0 @ wq, x0 @ wk, x0 @ wv
        s = q @ k.T
        p = np.exp(s - s.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g_o = np.zeros((4, 3))
        g_o[5 // 3, 5 % 3] = 1
        g_p, g_v = 0.5 * g_o @ v.T, 0.5 * p.T @ g_o
        g_s = p * (g_p - (p * g_p).sum(1, keepdims=True))
        g_q, g_k = 0.5 * g_s @ k, 0.5 * g_s.T @ q
        return g_q @ wq.T + g_k @ wk.T + g_v @ wv.T

    np.testing.assert_allclose(res.relevance[0], x[0] * modified_gradient(x[0]), rtol=1e-4, atol=1e-6)


EMBEDDING = """g (int64[N, 5] ids) => (float[N, 2] y) {
    e = Gather(table, ids)
    m = ReduceMean<axes = [1], keepdims = 0>(e)
    y = MatMul(m, w)
}"""


def test_token_ids_get_the_relevance_of_their_embedding_row(rng):
    table, w = rng.normal(size=(7, 3)).astype(np.float32), rng.normal(size=(3, 2)).astype(np.float32)
    ids = rng.integers(0, 7, size=(2, 5))
    res = _explain(_model(EMBEDDING, table=table, w=w), {"ids": ids}, target=1)
    assert res.relevance.shape == (2, 5)
    expected = (table[ids] * (w[:, 1] / 5)).sum(-1)   # R_t = e_t * g_t summed over the hidden axis
    np.testing.assert_allclose(res.relevance, expected, rtol=1e-5, atol=1e-7)
    # linear and bias-free: the tokens' relevance sums to the logit
    np.testing.assert_allclose(res.relevance.sum(1), res.outputs[0][:, 1], rtol=1e-5)


DYNAMO_SOFTMAX = """g (float[N, 4] x) => (float[N, 4] y) {
    p = Softmax<axis = -1>(x)
    nan = IsNaN(p)
    y = Where(nan, zero, p)
}"""


def test_where_isnan_after_softmax_routes_through(rng):
    x = rng.normal(size=(2, 4)).astype(np.float32)
    res = _explain(_model(DYNAMO_SOFTMAX, zero=0.0), x, target=0)
    s = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    for i in range(2):
        np.testing.assert_allclose(res.relevance[i], x[i] * (np.diag(s[i]) - np.outer(s[i], s[i]))[0], rtol=1e-5,
                                   atol=1e-7)
