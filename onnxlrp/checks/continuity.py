"""Continuity (Montavon et al. 2018, "Methods for interpreting and understanding deep neural networks"):
how much an explanation changes for a small change of the input,

    max over perturbed x' of ||R(x) - R(x')||_1 / ||x - x'||_2

with x' the input shifted by one pixel along each spatial axis, and x plus small Gaussian noise. Small
is better: similar inputs should get similar explanations. The target stays the class explained at x.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ContinuityResult:
    ratios: np.ndarray           # [N, perturbations]: ||R(x) - R(x')||_1 / ||x - x'||_2
    perturbations: list[str]

    @property
    def per_sample(self) -> np.ndarray:
        return self.ratios.max(axis=1)

    def table(self) -> str:
        lines = ["| perturbation | mean ratio | max ratio |", "|---|---|---|"]
        for k, name in enumerate(self.perturbations):
            lines.append(f"| {name} | {self.ratios[:, k].mean():.4g} | {self.ratios[:, k].max():.4g} |")
        worst = self.per_sample
        lines.append(f"| **max over perturbations** | {worst.mean():.4g} | {worst.max():.4g} |")
        return "\n".join(lines)


def perturbed_inputs(x: np.ndarray, noise_std: float, noise_draws: int, spatial_axes: tuple[int, ...],
                     rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """One-pixel shifts (edge repeated) along each spatial axis, and Gaussian noise of std
    noise_std * the input's std."""
    variants = []
    for axis in spatial_axes:
        shifted = np.roll(x, 1, axis=axis)
        edge = [slice(None)] * x.ndim
        edge[axis] = slice(0, 1)
        shifted[tuple(edge)] = x[tuple(edge)]
        variants.append((f"shift 1px along axis {axis}", shifted))
    for k in range(noise_draws):
        scale = noise_std * float(x.std() or 1.0)
        variants.append((f"noise {noise_std:g}·std #{k + 1}", x + rng.normal(0, scale, x.shape).astype(x.dtype)))
    return variants


def continuity(explainer, x: np.ndarray, target=None, mode: str = "logit", noise_std: float = 0.01,
               noise_draws: int = 2, channel_axis: int | None = 1, seed: int = 0) -> ContinuityResult:
    """The continuity ratio of each sample of `x` ([N, ...]) under each perturbation."""
    x = np.asarray(x, dtype=np.float32)
    channel = channel_axis % x.ndim if channel_axis is not None and x.ndim > 2 else None
    spatial = tuple(a for a in range(1, x.ndim) if a != channel)
    rng = np.random.default_rng(seed)
    base = explainer.explain(x, target=target, mode=mode)
    targets = base.target if base.target is not None else target
    names, ratios = [], []
    for name, moved in perturbed_inputs(x, noise_std, noise_draws, spatial, rng):
        other = explainer.explain(moved, target=targets, mode=mode)
        change = np.abs(base.relevance - other.relevance).reshape(len(x), -1).sum(axis=1)
        distance = np.linalg.norm((x - moved).reshape(len(x), -1), axis=1)
        names.append(name)
        ratios.append(np.where(distance > 0, change / np.maximum(distance, 1e-30), 0.0))
    return ContinuityResult(ratios=np.stack(ratios, axis=1), perturbations=names)
