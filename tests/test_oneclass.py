"""One-class SVMs (scikit-learn, exported by skl2onnx) explained with OC-DTD (onnxlrp/oneclass.py).

The oracle is OC-DTD written from the paper's formulas (docs/rules.md "One-class SVMs (OC-DTD)") in float64 on
scikit-learn's own attributes, not on the ONNX file, with the coefficients normalised to sum to 1;
scikit-learn's decision_function and predict (and onnxruntime on the exported model) give f(x) and the label.
"""
from __future__ import annotations

import numpy as np
import pytest

svm = pytest.importorskip("sklearn.svm")
skl2onnx = pytest.importorskip("skl2onnx")
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from onnxlrp import Explainer  # noqa: E402
from onnxlrp.errors import OnnxLrpError  # noqa: E402


def _export(model, x):
    return skl2onnx.to_onnx(model, x[:1].astype(np.float32), target_opset={"": 17, "ai.onnx.ml": 3})


def _onnxruntime_label(onnx_model, x):
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0].ravel()


def _paper(model, x, at_vector=0.0):
    """OC-DTD from the paper's formulas: with ã_j = a_j / sum_k a_k,
    o(x) = -1/g log sum_j ã_j exp(-g ||x - u_j||^2); R_j = o(x) ã_j exp(-g ||x - u_j||^2) / sum_k (same);
    R_i = sum_j R_j (x_i - u_ij)^2 / ||x - u_j||^2. Support vectors within `at_vector` of x (squared distance)
    hand their R_j to the others in proportion to theirs (docs/oneclass.md)."""
    a, u, g = model.dual_coef_[0].astype(np.float64), model.support_vectors_.astype(np.float64), model._gamma
    normalised = a / a.sum()
    squares = (x[:, None, :] - u[None]) ** 2                          # [N, J, d]
    distance = squares.sum(-1)
    exponent = np.log(normalised) - g * distance                      # log(ã_j exp(-g d_j))
    o = -np.logaddexp.reduce(exponent, axis=1) / g
    far = distance > at_vector
    assert far.any(1).all()
    kept = np.where(far, exponent, -np.inf)
    r_j = np.exp(kept - np.logaddexp.reduce(kept, axis=1, keepdims=True)) * o[:, None]
    parts = squares / np.where(far, distance, 1.0)[..., None]
    return o, (parts * r_j[..., None]).sum(1)


def _check_the_contract(res):
    """o(x) >= 0, every R_i >= 0, sum_i R_i = o(x) (float32)."""
    assert np.all(res.score >= 0) and np.all(res.relevance >= 0)
    np.testing.assert_allclose(res.relevance.sum(1), res.score, rtol=2e-6, atol=0)


CASES = [dict(gamma=0.3, nu=0.1, n=200, d=4, seed=0), dict(gamma=1.5, nu=0.3, n=80, d=2, seed=1),
         dict(gamma=0.02, nu=0.05, n=300, d=9, seed=2), dict(gamma="scale", nu=0.5, n=60, d=6, seed=3),
         dict(gamma=0.05, nu=0.4, n=400, d=8, seed=4)]


@pytest.mark.parametrize("case", CASES)
def test_the_outputs_are_the_models_and_the_relevance_is_oc_dtds(case):
    rng = np.random.default_rng(case["seed"])
    x_train = rng.normal(size=(case["n"], case["d"])) * rng.uniform(0.5, 2, size=case["d"])
    model = svm.OneClassSVM(gamma=case["gamma"], nu=case["nu"]).fit(x_train)
    onnx_model = _export(model, x_train)
    # fresh points, inliers and outliers
    x = np.concatenate([rng.normal(size=(5, case["d"])), rng.normal(size=(5, case["d"])) * 4]).astype(np.float32)
    res = Explainer(onnx_model).explain(x)
    np.testing.assert_array_equal(res.outputs[0].ravel(), _onnxruntime_label(onnx_model, x))
    np.testing.assert_array_equal(res.outputs[0].ravel(), model.predict(x))
    np.testing.assert_allclose(res.outputs[1].ravel(), model.decision_function(x), rtol=1e-4, atol=1e-5)
    _check_the_contract(res)
    want_o, want_r = _paper(model, x.astype(np.float64))
    np.testing.assert_allclose(res.score, want_o, rtol=1e-5)
    np.testing.assert_allclose(res.relevance, want_r, rtol=1e-4, atol=1e-5 * want_o.max())


def _planted(rng, n, d, rows, push=6.0):
    """n normal training rows, and `rows` fresh ones with one feature (returned) pushed `push` SD up or down."""
    x = rng.normal(size=(n + rows, d)) * rng.uniform(0.7, 1.4, d) + rng.uniform(-5, 5, d)
    x_train, fresh = x[:n], x[n:]
    features = rng.integers(0, d, rows)
    fresh[np.arange(rows), features] += rng.choice([-1.0, 1.0], rows) * push * x_train.std(0)[features]
    return x_train, fresh.astype(np.float32), features


PLANTED = [  # gamma, nu, with a StandardScaler in front, n, d
    ("scale", 0.5, True, 1000, 8),      # scikit-learn's defaults
    (0.02, 0.5, True, 1000, 8), (0.1, 0.2, True, 600, 10), (0.05, 0.3, False, 800, 6), (0.02, 0.4, False, 500, 8),
    (0.1, 0.5, False, 1000, 8), (0.5, 0.05, True, 400, 4)]


@pytest.mark.parametrize("gamma, nu, scaler, n, d", PLANTED)
def test_the_planted_feature_of_a_flagged_row_is_on_top(gamma, nu, scaler, n, d):
    rng = np.random.default_rng(11)
    x_train, rows, features = _planted(rng, n, d, 100)
    model = svm.OneClassSVM(gamma=gamma, nu=nu)
    model = make_pipeline(StandardScaler(), model) if scaler else model
    res = Explainer(_export(model.fit(x_train), x_train)).explain(rows)
    flagged = res.outputs[0].ravel() == -1
    assert flagged.sum() >= 80
    _check_the_contract(res)
    on_top = (res.relevance.argmax(1) == features) & (res.score > 0)
    assert on_top[flagged].mean() >= 0.9, on_top[flagged].mean()


@pytest.mark.parametrize("gamma", ["scale", 0.5])
def test_a_planted_training_row_is_explained_by_the_other_support_vectors(gamma):
    # the planted rows are support vectors: at x = u_j that vector's share has no direction. Behind a Scaler
    # the explainer's float32 x lies round-off away from u_j (scikit-learn scaled it in float64)
    rng = np.random.default_rng(12)
    x_train, _, _ = _planted(rng, 400, 6, 0)
    x_train = x_train.astype(np.float32).astype(np.float64)
    features = rng.choice(6, 4, replace=False)
    x_train[np.arange(4), features] += 6 * x_train.std(0)[features]
    pipeline = make_pipeline(StandardScaler(), svm.OneClassSVM(gamma=gamma, nu=0.05)).fit(x_train)
    rows = x_train[:20].astype(np.float32)                  # 4 planted, 16 ordinary (support vectors or not)
    assert set(pipeline[-1].support_) >= {0, 1, 2, 3}
    onnx_model = _export(pipeline, x_train)
    res = Explainer(onnx_model).explain(rows)
    # outliers, or margin support vectors (f(x) = 0 to libsvm's tolerance 1e-3: their label is onnxruntime's)
    np.testing.assert_array_equal(res.outputs[0].ravel(), _onnxruntime_label(onnx_model, rows))
    assert np.all(pipeline.decision_function(rows[:4]) < 1e-3)
    np.testing.assert_array_equal(res.relevance[:4].argmax(1), features)
    _check_the_contract(res)
    want_o, want_r = _paper(pipeline[-1], pipeline[0].transform(rows.astype(np.float64)), at_vector=1e-9)
    np.testing.assert_allclose(res.score, want_o, rtol=1e-5)
    np.testing.assert_allclose(res.relevance, want_r, rtol=1e-4, atol=1e-5 * want_o.max())


def test_a_standard_scaler_in_front_is_explained_through():
    rng = np.random.default_rng(4)
    x_train = rng.normal(size=(200, 3)) * [1.0, 50.0, 0.01] + [0, 100, 5]
    pipeline = make_pipeline(StandardScaler(), svm.OneClassSVM(gamma=0.4, nu=0.1)).fit(x_train)
    x = rng.normal(size=(6, 3)) * [1.0, 50.0, 0.01] + [0, 100, 5]
    x[0, 1] += 400                                          # 8 standard deviations on feature 1
    res = Explainer(_export(pipeline, x_train)).explain(x.astype(np.float32))
    np.testing.assert_allclose(res.outputs[1].ravel(), pipeline.decision_function(x), rtol=1e-4, atol=1e-4)
    _check_the_contract(res)
    assert res.relevance[0].argmax() == 1
    want_o, want_r = _paper(pipeline[-1], pipeline[0].transform(x))
    np.testing.assert_allclose(res.relevance, want_r, rtol=1e-4, atol=1e-5 * want_o.max())


def test_support_vectors_all_at_x_share_evenly_and_the_score_is_not_negative():
    # three identical support vectors (a hand-made SVMRegressor): at x = u, o(x) = 0 exactly, and float32's
    # sum of the ã_j, a few ulps from 1 either way, must not make o(x) or any R_i negative
    u = [0.1, -0.3, 7.0]
    node = helper.make_node("SVMRegressor", ["x"], ["f"], domain="ai.onnx.ml", kernel_type="RBF",
                            kernel_params=[0.7, 0.0, 3.0], coefficients=[0.5, 0.9, 0.1], support_vectors=u * 3,
                            n_supports=3, one_class=1, rho=[-0.25])
    graph = helper.make_graph([node], "svm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("f", TensorProto.FLOAT, [None, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    x = np.array([u, [0.1, 1.7, 7.0]], np.float32)
    res = Explainer(model).explain(x)
    _check_the_contract(res)
    assert res.score[0] <= 1e-6
    np.testing.assert_allclose(res.score[1], 4.0, rtol=1e-6)          # ||x - u||^2, all the mass at u
    np.testing.assert_allclose(res.relevance[1], [0, 4.0, 0], atol=1e-6)
    np.testing.assert_allclose(res.outputs[0].ravel(), 1.5 * np.exp(-0.7 * np.array([0, 4.0])) - 0.25, rtol=1e-6)


def test_the_linear_kernel_is_explained_at_the_models_root_point():
    rng = np.random.default_rng(5)
    x_train = rng.normal(size=(300, 3)) * [1.0, 2.0, 0.5] + [4, 10, 3]
    linear = svm.OneClassSVM(kernel="linear", nu=0.2).fit(x_train)
    x = x_train[:20].copy()
    features = np.arange(20) % 3
    x[np.arange(20), features] -= 6 * x_train.std(0)[features]   # towards the origin: the side the model flags
    x = x.astype(np.float32)
    res = Explainer(_export(linear, x_train)).explain(x)
    np.testing.assert_allclose(res.outputs[1].ravel(), linear.decision_function(x), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(res.score, -linear.decision_function(x), rtol=1e-4, atol=1e-3)
    # o(x) = -(w.x + b) is linear: exact at any root x0 (w.x0 + b = 0); onnxlrp's is -b w / ||w||^2
    w, b = linear.coef_[0], linear.intercept_[0]
    root = -b * w / (w @ w)
    want = w * (root - x.astype(np.float64))
    np.testing.assert_allclose(res.relevance, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    np.testing.assert_allclose(res.relevance.sum(1), res.score, atol=1e-5 * np.abs(want).sum(1).max())
    flagged = res.outputs[0].ravel() == -1
    assert flagged.sum() >= 10
    assert np.all(res.relevance[flagged].argmax(1) == features[flagged])     # it depends on the row


def test_other_kernels_and_a_target_are_refused():
    rng = np.random.default_rng(5)
    x_train = rng.normal(size=(100, 3)) + 4
    x = x_train[:5].astype(np.float32)
    poly = svm.OneClassSVM(kernel="poly", nu=0.2).fit(x_train)
    with pytest.raises(OnnxLrpError, match="POLY kernel"):
        Explainer(_export(poly, x_train)).explain(x)
    linear = svm.OneClassSVM(kernel="linear", nu=0.2).fit(x_train)
    with pytest.raises(OnnxLrpError, match="give no target"):
        Explainer(_export(linear, x_train)).explain(x, target=1)


def test_the_command_line_on_csv_rows_writes_a_bar_chart(tmp_path):
    from onnxlrp.cli import main
    rng = np.random.default_rng(6)
    x_train = rng.normal(size=(200, 3))
    path = tmp_path / "ocsvm.onnx"
    path.write_bytes(_export(svm.OneClassSVM(gamma=0.5, nu=0.1).fit(x_train), x_train).SerializeToString())
    rows = tmp_path / "readings.csv"
    rows.write_text("temperature,pressure,vibration\n0.1,0.2,0.1\n0.0,6.0,0.3\n")
    assert main(["explain", str(path), str(rows), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    relevance = np.load(tmp_path / "out" / "readings.row1.relevance.npy")
    assert relevance.shape == (3,) and relevance.argmax() == 1 and np.all(relevance >= 0)
    assert (tmp_path / "out" / "readings.row1.features.png").exists()
    np.save(tmp_path / "one.npy", np.array([0.0, 0.0, 7.0], np.float32))
    assert main(["explain", str(path), str(tmp_path / "one.npy"), "--feature-names", "t,p,v",
                 "--out", str(tmp_path / "out2"), "--quiet"]) == 0
    assert np.load(tmp_path / "out2" / "one.relevance.npy").argmax() == 2
