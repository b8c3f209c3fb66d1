"""Continuity: the ratio computed by hand on a linear model."""
import numpy as np

from onnxlrp import Explainer, composites, rules
from onnxlrp.checks import continuity
from reference import dense_model


def test_linear_model_by_hand(rng):
    w = rng.normal(size=(2, 9))
    explainer = Explainer(dense_model([(w, np.zeros(2))]), composite=composites.Uniform(rules.LRP0()))
    x = rng.normal(size=(3, 9)).astype(np.float32)
    result = continuity(explainer, x, target=1, channel_axis=None, noise_draws=1, noise_std=0.1)
    assert result.perturbations[0] == "shift 1px along axis 1"
    shifted = np.concatenate([x[:, :1], x[:, :-1]], axis=1)      # one step right, the edge repeated
    d = x - shifted
    # LRP-0 relevance is w * x, so R(x) - R(x') = w * (x - x')
    expected = np.abs(w[1] * d).sum(1) / np.linalg.norm(d, axis=1)
    np.testing.assert_allclose(result.ratios[:, 0], expected, rtol=1e-4)
    # for any perturbation the ratio lies between min|w| and max|w| * sqrt(n) (Cauchy-Schwarz)
    assert np.all(result.ratios >= np.abs(w[1]).min() - 1e-5)
    assert np.all(result.ratios <= np.abs(w[1]).max() * 3 + 1e-5)
    np.testing.assert_allclose(result.per_sample, result.ratios.max(axis=1))
    assert "max over perturbations" in result.table()


def test_image_model_shapes(models_dir, rng):
    x = rng.uniform(0, 1, size=(2, 3, 32, 32)).astype(np.float32)
    result = continuity(Explainer(models_dir / "tiny_vgg.onnx"), x)
    assert result.ratios.shape == (2, 4) and np.all(np.isfinite(result.ratios))
