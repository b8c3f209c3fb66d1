"""Model-parameter randomisation: the original row is exact, a randomised linear model gives unrelated
heatmaps, and the layers go from the top down, cascading or one at a time."""
import numpy as np
import pytest

from onnxlrp import Explainer, composites, rules
from onnxlrp.checks import randomisation
from onnxlrp.checks.randomisation import weighted_layers
from reference import dense_model

LRP0 = composites.Uniform(rules.LRP0())


def test_randomised_linear_model_gives_unrelated_heatmaps():
    w = np.random.default_rng(7).normal(size=(2, 400))   # not the randomiser's own seed (0)
    x = np.ones((3, 400), np.float32)            # LRP-0 heatmap = the weights of the target row
    result = randomisation(dense_model([(w, np.zeros(2))]), x, lambda m: Explainer(m, composite=LRP0), target=0,
                           channel_axis=None)
    original, randomised = result.rows
    np.testing.assert_allclose(original.spearman, 1.0)
    np.testing.assert_allclose(original.ssim, 1.0)
    np.testing.assert_allclose(result.heatmaps[0][0, 0], w[0], rtol=1e-5)
    assert np.all(np.abs(randomised.spearman) < 0.2)  # independent draws: |rho| ~ 1/sqrt(400)
    assert randomised.layers == ["dense0"]


def test_layers_from_the_top_cascading_and_independent(rng):
    layers = [(rng.normal(size=(8, 6)), np.zeros(8)), (rng.normal(size=(8, 8)), np.zeros(8)),
              (rng.normal(size=(3, 8)), np.zeros(3))]
    model = dense_model(layers)
    assert [name for name, _ in weighted_layers(model)] == ["dense2", "dense1", "dense0"]
    x = rng.normal(size=(2, 6)).astype(np.float32)
    cascading = randomisation(model, x, lambda m: Explainer(m, composite=LRP0), channel_axis=None)
    assert [row.layers for row in cascading.rows] == [[], ["dense2"], ["dense2", "dense1"],
                                                      ["dense2", "dense1", "dense0"]]
    independent = randomisation(model, x, lambda m: Explainer(m, composite=LRP0), order="independent",
                                channel_axis=None, max_layers=2)
    assert [row.layers for row in independent.rows] == [[], ["dense2"], ["dense1"]]
    assert "| original | 1.000" in cascading.table()
    with pytest.raises(ValueError, match="order"):
        randomisation(model, x, Explainer, order="sideways")


def test_image_model_heatmaps_decorrelate(models_dir, rng):
    x = rng.uniform(0, 1, size=(2, 3, 32, 32)).astype(np.float32)
    result = randomisation(models_dir / "small_vgg.onnx", x, lambda m: Explainer(m), max_layers=3)
    assert len(result.rows) == 4 and result.heatmaps[1].shape == (2, 32, 32)
    assert result.rows[-1].spearman.mean() < 0.8
