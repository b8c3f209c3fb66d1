"""Selectivity: curves computed by hand on a linear model, and the patch bookkeeping."""
import numpy as np
import pytest

from onnxlrp import Explainer, composites, rules
from onnxlrp.checks import pixel_flipping, selectivity
from onnxlrp.checks.pixel_flipping import patch_index, patch_scores, perturbed_values
from reference import dense_model


def _linear(rng, features=12, classes=3):
    w = rng.normal(size=(classes, features))
    return w, Explainer(dense_model([(w, np.zeros(classes))]), composite=composites.Uniform(rules.LRP0()))


def test_morf_and_lerf_curves_of_a_linear_model_by_hand(rng):
    w, explainer = _linear(rng)
    x = rng.normal(size=(2, 12)).astype(np.float32)
    result = pixel_flipping(explainer, x, target=1, patch_size=1, perturbation="constant", fill=0.0,
                            channel_axis=None)
    contributions = x * w[1]                     # LRP-0 relevance = the terms of the logit
    curves = {c.method: c for c in result.curves}
    lrp = curves[next(name for name in curves if name.startswith("LRP"))]
    for i in range(2):
        logit = contributions[i].sum()
        # setting x_j to 0 removes term j: MoRF removes the largest terms first, LeRF the smallest
        morf = logit - np.r_[0, np.cumsum(np.sort(contributions[i])[::-1])]
        lerf = logit - np.r_[0, np.cumsum(np.sort(contributions[i]))]
        np.testing.assert_allclose(lrp.morf[i], morf, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(lrp.lerf[i], lerf, rtol=1e-4, atol=1e-5)
    assert lrp.aopc_morf == pytest.approx(np.mean([np.mean(lrp.morf[i][0] - lrp.morf[i]) for i in range(2)]))
    assert lrp.abpc == pytest.approx(float(np.mean(lrp.lerf - lrp.morf)))
    assert lrp.abpc > curves["random"].abpc == 0.0     # one random ordering read both ways
    np.testing.assert_allclose(curves["gradient × input"].morf, lrp.morf, rtol=1e-5)  # LRP-0 on a linear model
    np.testing.assert_allclose(result.fractions, np.arange(13) / 12)
    assert "| random |" in result.table()


def test_steps_flip_several_patches_at_once(rng):
    w, explainer = _linear(rng, features=10)
    x = rng.normal(size=(1, 10)).astype(np.float32)
    result = pixel_flipping(explainer, x, target=0, patch_size=1, perturbation="constant", steps=4,
                            channel_axis=None, gradient_baseline=False, random_baseline=False)
    contributions = np.sort(x[0] * w[0])[::-1]
    flipped = np.round(np.arange(5) * 10 / 4).astype(int)      # 0, 2, 5, 8, 10 patches
    expected = contributions.sum() - np.array([contributions[:k].sum() for k in flipped])
    np.testing.assert_allclose(result.curves[0].morf[0], expected, rtol=1e-4, atol=1e-5)


def test_patches_cover_the_image_row_major():
    index, count = patch_index((5, 4), 2)
    assert count == 6                                           # ceil(5/2) x ceil(4/2)
    assert index[0].tolist() == [0, 0, 1, 1] and index[4].tolist() == [4, 4, 5, 5]
    heat = np.arange(20.0).reshape(1, 5, 4)
    scores = patch_scores(heat, 2)
    for p in range(count):
        assert scores[0, p] == heat[0][index == p].sum()


def test_perturbations(rng):
    x = rng.uniform(-1, 2, size=(2, 3, 8, 8)).astype(np.float32)
    noise = perturbed_values(x, "uniform", rng, 1, 2)
    assert noise.min() >= x.min() and noise.max() <= x.max() and not np.allclose(noise, x)
    flat = np.full((1, 3, 8, 8), 0.7, np.float32)
    np.testing.assert_allclose(perturbed_values(flat, "blur", rng, 1, 4), flat, rtol=1e-6)  # blur keeps a constant
    blurred = perturbed_values(x, "blur", rng, 1, 4)
    assert blurred.std() < x.std()
    with pytest.raises(ValueError, match="perturbation"):
        selectivity(lambda b: b, x, {}, np.zeros(2, int), perturbation="swirl")


def test_on_an_image_model_lrp_beats_random(models_dir, rng):
    explainer = Explainer(models_dir / "small_vgg.onnx")
    x = rng.uniform(0, 1, size=(2, 3, 32, 32)).astype(np.float32)
    result = pixel_flipping(explainer, x, patch_size=4, perturbation="constant", steps=16)
    curves = {c.method: c for c in result.curves}
    assert len(result.fractions) == 17 and curves["random"].morf.shape == (2, 17)
    lrp = next(c for name, c in curves.items() if name.startswith("LRP"))
    assert lrp.abpc > curves["random"].abpc
