"""Conservation report: known answers on a linear model and on a bias-free ReLU net."""
import numpy as np

from onnxlrp import Explainer, composites, rules
from onnxlrp.checks import conservation
from reference import dense_model


def test_linear_model_by_hand(rng):
    w, b = rng.normal(size=(3, 5)), rng.normal(size=3)
    x = rng.normal(size=(4, 5)).astype(np.float32)
    explainer = Explainer(dense_model([(w, b)]), composite=composites.Uniform(rules.LRP0()), layer_sums=True)
    report = conservation(explainer, x, target=1)
    assert [row.label for row in report.layers] == ["output", "dense0", "input/x"]
    z = x @ w[1] + b[1]
    contributions = x * w[1]                      # LRP-0 on one linear layer: R_i = x_i w_ci
    np.testing.assert_allclose(report.layers[0].relative_sum, 1.0)
    np.testing.assert_allclose(report.layers[1].relative_sum, (z - b[1]) / z, rtol=1e-4)
    negative = np.clip(contributions, None, 0).sum(1) / np.abs(contributions).sum(1)
    np.testing.assert_allclose(report.layers[1].negative_share, -negative, rtol=1e-4)
    assert "| dense0 | dense: Epsilon(epsilon=0.0" in report.table()


def test_bias_free_relu_net_conserves_and_zplus_is_positive(rng, tmp_path):
    layers = [(rng.normal(size=(8, 6)), np.zeros(8)), (rng.normal(size=(6, 8)), np.zeros(6)),
              (rng.normal(size=(3, 6)), np.zeros(3))]
    x = rng.uniform(0.1, 1.0, size=(5, 6)).astype(np.float32)
    model = dense_model(layers)
    report = conservation(Explainer(model, composite=composites.Uniform(rules.LRP0()), layer_sums=True), x)
    for row in report.layers:
        np.testing.assert_allclose(row.relative_sum, 1.0, rtol=1e-4)
    plus = conservation(Explainer(model, composite=composites.Uniform(rules.ZPlus()), layer_sums=True), x, mode="one")
    for row in plus.layers:
        assert np.all(row.negative_share == 0)
    if report.plot(tmp_path / "sums.png"):
        assert (tmp_path / "sums.png").stat().st_size > 0
