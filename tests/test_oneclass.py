"""One-class SVMs (scikit-learn, exported by skl2onnx) explained with OC-DTD (onnxlrp/oneclass.py)."""
from __future__ import annotations

import numpy as np
import pytest

svm = pytest.importorskip("sklearn.svm")
skl2onnx = pytest.importorskip("skl2onnx")
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from onnxlrp import Explainer  # noqa: E402
from onnxlrp.errors import OnnxLrpError  # noqa: E402
from onnxlrp.oneclass import find_one_class_svm, outlier_score, svm_parameters  # noqa: E402


def _export(model, x):
    return skl2onnx.to_onnx(model, x[:1].astype(np.float32), target_opset={"": 17, "ai.onnx.ml": 3})


def _paper(model, x):
    """OC-DTD written from the paper's formulas, on scikit-learn's own attributes (not the ONNX file):
    o(x) = -1/g log sum_j a_j exp(-g ||x - u_j||^2); R_j = o(x) softmin share; R_i = sum_j R_j d_ij / d_j."""
    a, u, g = model.dual_coef_[0].astype(np.float64), model.support_vectors_.astype(np.float64), model._gamma
    d = (x[:, None, :] - u[None]) ** 2                      # [N, J, d]
    h = d.sum(-1) - np.log(a) / g                           # the distance layer
    share = np.exp(-g * (h - h.min(1, keepdims=True)))
    share /= share.sum(1, keepdims=True)
    o = -np.log((a * np.exp(-g * d.sum(-1))).sum(1)) / g   # the outlier score
    r_j = share * o[:, None]
    total = d.sum(-1, keepdims=True)
    parts = np.where(total > 0, d / np.where(total > 0, total, 1), 1 / d.shape[-1])   # x = u_j: shared evenly
    return o, (parts * r_j[..., None]).sum(1)


CASES = [dict(gamma=0.3, nu=0.1, n=200, d=4, seed=0), dict(gamma=1.5, nu=0.3, n=80, d=2, seed=1),
         dict(gamma=0.02, nu=0.05, n=300, d=9, seed=2), dict(gamma="scale", nu=0.5, n=60, d=6, seed=3)]


@pytest.mark.parametrize("case", CASES)
def test_the_neuralized_network_is_the_svm_and_oc_dtd_is_the_papers(case):
    rng = np.random.default_rng(case["seed"])
    x_train = rng.normal(size=(case["n"], case["d"])) * rng.uniform(0.5, 2, size=case["d"])
    model = svm.OneClassSVM(gamma=case["gamma"], nu=case["nu"]).fit(x_train)
    onnx_model = _export(model, x_train)
    # fresh points (at a support vector itself each feature's share of a zero distance is ill-posed)
    x = np.concatenate([rng.normal(size=(5, case["d"])), rng.normal(size=(5, case["d"])) * 4]).astype(np.float32)
    params = svm_parameters(find_one_class_svm(onnx_model)[0])
    # float64: the neuralized network computes the SVM's decision function
    o = outlier_score(x.astype(np.float64), params)
    np.testing.assert_allclose(np.exp(-params["gamma"] * o) + params["intercept"], model.decision_function(x),
                               rtol=1e-6, atol=1e-6)
    res = Explainer(onnx_model).explain(x)
    np.testing.assert_array_equal(res.outputs[0].ravel(), model.predict(x))
    np.testing.assert_allclose(res.outputs[1].ravel(), model.decision_function(x), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res.relevance.sum(1), res.score, rtol=1e-5, atol=1e-6)     # conservation
    want_o, want_r = _paper(model, x.astype(np.float64))
    np.testing.assert_allclose(res.score, want_o, rtol=1e-5, atol=1e-5)
    # float32 against float64: 1e-6 relative to the largest relevance of a sample
    error = np.abs(res.relevance - want_r).max(1) / np.maximum(np.abs(want_r).max(1), 1e-12)
    assert np.all(error <= 1e-5), error


@pytest.mark.parametrize("feature", [0, 1])
def test_the_planted_outlying_feature_gets_the_relevance(feature):
    rng = np.random.default_rng(7)
    x_train = rng.normal(size=(300, 2))
    model = svm.OneClassSVM(gamma=0.5, nu=0.05).fit(x_train)
    x = rng.normal(size=(20, 2)) * 0.3
    x[:, feature] += 5.0                                    # far out along one feature only
    res = Explainer(_export(model, x_train)).explain(x.astype(np.float32))
    assert np.all(res.outputs[0].ravel() == -1)             # outliers
    assert np.all(res.relevance.argmax(1) == feature)
    assert np.all(res.relevance[:, feature] > 0.8 * res.score)


def test_a_standard_scaler_in_front_is_explained_through():
    rng = np.random.default_rng(4)
    x_train = rng.normal(size=(200, 3)) * [1.0, 50.0, 0.01] + [0, 100, 5]
    pipeline = make_pipeline(StandardScaler(), svm.OneClassSVM(gamma=0.4, nu=0.1)).fit(x_train)
    x = rng.normal(size=(6, 3)) * [1.0, 50.0, 0.01] + [0, 100, 5]
    x[0, 1] += 400                                          # 8 standard deviations on feature 1
    res = Explainer(_export(pipeline, x_train)).explain(x.astype(np.float32))
    np.testing.assert_allclose(res.outputs[1].ravel(), pipeline.decision_function(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res.relevance.sum(1), res.score, rtol=1e-5, atol=1e-6)
    assert res.relevance[0].argmax() == 1
    want_o, want_r = _paper(pipeline[-1], pipeline[0].transform(x))
    np.testing.assert_allclose(res.relevance, want_r, rtol=1e-4, atol=1e-5)


def test_the_linear_kernel_and_other_kernels():
    rng = np.random.default_rng(5)
    x_train = rng.normal(size=(100, 3)) + 4
    linear = svm.OneClassSVM(kernel="linear", nu=0.2).fit(x_train)
    x = x_train[:5].astype(np.float32)
    res = Explainer(_export(linear, x_train)).explain(x)
    np.testing.assert_allclose(res.outputs[1].ravel(), linear.decision_function(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res.score, -linear.decision_function(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res.relevance.sum(1), res.score, rtol=1e-5, atol=1e-6)
    poly = svm.OneClassSVM(kernel="poly", nu=0.2).fit(x_train)
    with pytest.raises(OnnxLrpError, match="POLY kernel"):
        Explainer(_export(poly, x_train)).explain(x)
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
    assert relevance.shape == (3,) and relevance.argmax() == 1
    assert (tmp_path / "out" / "readings.row1.features.png").exists()
    np.save(tmp_path / "one.npy", np.array([0.0, 0.0, 7.0], np.float32))
    assert main(["explain", str(path), str(tmp_path / "one.npy"), "--feature-names", "t,p,v",
                 "--out", str(tmp_path / "out2"), "--quiet"]) == 0
    assert np.load(tmp_path / "out2" / "one.relevance.npy").argmax() == 2
