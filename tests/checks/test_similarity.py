"""Similarity measures: known answers."""
import numpy as np
import pytest

from onnxlrp.checks.similarity import cosine, normalise, ranks, spearman, ssim, ssim_sign_free


def test_ranks_share_ties():
    np.testing.assert_array_equal(ranks(np.array([10.0, 20.0, 20.0, 5.0])), [2, 3.5, 3.5, 1])


def test_spearman_by_hand():
    # one swapped pair in four: rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 2 / 60
    assert spearman(np.array([1, 2, 3, 4.0]), np.array([1, 3, 2, 4.0])) == pytest.approx(0.8)
    assert spearman(np.arange(9.0), np.arange(9.0)[::-1] * 5) == pytest.approx(-1.0)
    assert spearman(np.exp(np.arange(6.0)), np.arange(6.0)) == pytest.approx(1.0)  # ranks only
    assert spearman(np.ones(5), np.arange(5.0)) == 0.0


def test_spearman_matches_scipy(rng):
    stats = pytest.importorskip("scipy.stats")
    a, b = rng.normal(size=(8, 8)), rng.integers(0, 4, size=(8, 8)).astype(float)  # with ties
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a.ravel(), b.ravel())[0], abs=1e-12)


def test_ssim_known_answers(rng):
    a = rng.normal(size=(16, 16))
    assert ssim(a, a, data_range=2.0) == pytest.approx(1.0)
    # two constant maps: only the luminance term is left, (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1)
    c1 = (0.01 * 2.0) ** 2
    expected = (2 * 0.5 * 0.2 + c1) / (0.25 + 0.04 + c1)
    assert ssim(np.full((12, 12), 0.5), np.full((12, 12), 0.2), data_range=2.0) == pytest.approx(expected)
    positive = rng.uniform(0, 1, size=(16, 16))
    assert ssim(positive, 1 - positive, data_range=1.0) < -0.5    # anti-correlated structure
    assert ssim_sign_free(a, -3 * a) == pytest.approx(1.0)   # a wholesale sign flip counts as similar
    assert abs(ssim_sign_free(a, rng.normal(size=(16, 16)))) < 0.3


def test_ssim_small_maps_use_a_smaller_window(rng):
    a = rng.normal(size=(4, 6))
    assert ssim(a, a, data_range=2.0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        ssim(a, a.T, data_range=2.0)


def test_cosine_and_normalise():
    assert cosine(np.array([1.0, 0]), np.array([0, 2.0])) == 0.0
    assert cosine(np.array([1.0, 1]), np.array([2.0, 2])) == pytest.approx(1.0)
    assert cosine(np.zeros(3), np.ones(3)) == 0.0
    np.testing.assert_allclose(normalise(np.array([-4.0, 2.0])), [-1.0, 0.5])
