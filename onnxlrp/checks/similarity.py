"""Similarity of two heatmaps: Spearman rank correlation, SSIM (Wang et al. 2004) and cosine similarity.

All three take one map each (any shape, compared element by element) and return a float.
"""
from __future__ import annotations

import numpy as np

SSIM_SIGMA = 1.5   # the Gaussian window of Wang et al.
SSIM_WINDOW = 11
SSIM_K1, SSIM_K2 = 0.01, 0.03


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(flat, kind="stable")
    sorted_values = flat[order]
    # the first and last position of each run of equal values
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], flat.size]
    mean_rank = (starts + ends + 1) / 2.0
    result = np.empty(flat.size)
    result[order] = np.repeat(mean_rank, ends - starts)
    return result


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel() - np.mean(a)
    b = np.asarray(b, dtype=np.float64).ravel() - np.mean(b)
    norm = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / norm) if norm > 0 else 0.0


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation: the Pearson correlation of the ranks (0 when either map is constant)."""
    if np.size(a) != np.size(b):
        raise ValueError(f"maps of different sizes: {np.shape(a)} and {np.shape(b)}")
    return pearson(ranks(a), ranks(b))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm > 0 else 0.0


def _gaussian_filter_valid(image: np.ndarray, window: int) -> np.ndarray:
    """Separable Gaussian (sigma 1.5) over the last two axes, only where the window fits."""
    radius = window // 2
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / SSIM_SIGMA) ** 2)
    taps /= taps.sum()
    rows = np.apply_along_axis(lambda v: np.convolve(v, taps, mode="valid"), -1, image)
    return np.apply_along_axis(lambda v: np.convolve(v, taps, mode="valid"), -2, rows)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """Mean structural similarity of two 2-D maps (1-D maps are one row), Gaussian window 11 (smaller
    for maps smaller than that), K1 = 0.01, K2 = 0.03."""
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"SSIM compares two 2-D maps of one shape; got {a.shape} and {b.shape}")
    window = min(SSIM_WINDOW, *[side if side % 2 else side - 1 for side in a.shape])
    window = max(window, 1)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _gaussian_filter_valid(a, window), _gaussian_filter_valid(b, window)
    var_a = _gaussian_filter_valid(a * a, window) - mu_a ** 2
    var_b = _gaussian_filter_valid(b * b, window) - mu_b ** 2
    cov = _gaussian_filter_valid(a * b, window) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def normalise(heat: np.ndarray) -> np.ndarray:
    """A map divided by its largest |value|, so it lies in [-1, 1] (a zero map stays zero)."""
    heat = np.asarray(heat, dtype=np.float64)
    scale = np.max(np.abs(heat))
    return heat / scale if scale > 0 else heat


def ssim_sign_free(a: np.ndarray, b: np.ndarray) -> float:
    """max(SSIM(a, b), SSIM(a, -b)): a heatmap whose sign flips wholesale counts as similar (Adebayo
    et al.). Each map is divided by its max |value| and moved from [-1, 1] to [0, 1] first: with signed
    values SSIM's luminance term turns negative and two negative terms would multiply to a high score."""
    a, b = (normalise(a) + 1) / 2, (normalise(b) + 1) / 2
    return max(ssim(a, b, data_range=1.0), ssim(a, 1 - b, data_range=1.0))
