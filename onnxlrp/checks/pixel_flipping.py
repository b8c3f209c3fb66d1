"""Selectivity by region perturbation (Samek et al. 2017, "Evaluating the visualization of what a deep
neural network has learned").

The input is cut into square patches; a heatmap scores each patch by the sum of its relevance. The
patches are perturbed one step at a time, most relevant first (MoRF) or least relevant first (LeRF),
and the target's logit is read from the plain forward model after every step:

    AOPC = 1/(L+1) * sum over k = 0..L of (f(x_0) - f(x_k))      (mean over samples)
    ABPC = 1/(L+1) * sum over k = 0..L of (f_LeRF(x_k) - f_MoRF(x_k)), the area between the curves

A faithful heatmap has a large MoRF AOPC (the score falls fast), a small LeRF AOPC and a large ABPC,
and beats a random ordering.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..progress import progress_bar

PERTURBATIONS = ("uniform", "blur", "constant")


@dataclass
class SelectivityCurves:
    method: str
    morf: np.ndarray            # [samples, L+1]: f(x_k), most relevant first
    lerf: np.ndarray            # [samples, L+1]: f(x_k), least relevant first

    @property
    def aopc_morf(self) -> float:
        return float(np.mean(self.morf[:, :1] - self.morf))

    @property
    def aopc_lerf(self) -> float:
        return float(np.mean(self.lerf[:, :1] - self.lerf))

    @property
    def abpc(self) -> float:
        return float(np.mean(self.lerf - self.morf))


@dataclass
class SelectivityResult:
    curves: list[SelectivityCurves]
    fractions: np.ndarray        # [L+1]: the share of patches perturbed after step k
    targets: np.ndarray          # the class whose logit is followed, per sample
    patch_size: int
    perturbation: str
    settings: dict = field(default_factory=dict)

    def table(self) -> str:
        lines = ["| ordering | AOPC MoRF (higher is better) | AOPC LeRF (lower is better) | ABPC (higher is better) |",
                 "|---|---|---|---|"]
        for c in self.curves:
            lines.append(f"| {c.method} | {c.aopc_morf:.4g} | {c.aopc_lerf:.4g} | {c.abpc:.4g} |")
        return "\n".join(lines)

    def plot(self, path) -> bool:
        """MoRF (solid) and LeRF (dashed) curves of every ordering as a PNG; False without matplotlib."""
        from ..pictures import plot_curves

        series = []
        for c in self.curves:
            series.append((f"{c.method} MoRF", self.fractions, c.morf.mean(axis=0), "-"))
            if c.method != "random":
                series.append((f"{c.method} LeRF", self.fractions, c.lerf.mean(axis=0), "--"))
        return plot_curves(path, series, xlabel="share of patches perturbed", ylabel="target logit (mean)",
                           title=f"region perturbation ({self.perturbation}, {self.patch_size}px patches)")


def patch_scores(heat: np.ndarray, patch_size: int) -> np.ndarray:
    """Sum of a [N, *spatial] heatmap over each patch: [N, number of patches], in patch_index's order."""
    index, count = patch_index(heat.shape[1:], patch_size)
    return np.stack([np.bincount(index.ravel(), weights=sample.ravel(), minlength=count) for sample in heat])


def patch_index(spatial: tuple[int, ...], patch_size: int) -> tuple[np.ndarray, int]:
    """The patch each position belongs to (patches in row-major order), and the number of patches."""
    grid = [-(-side // patch_size) for side in spatial]
    index = np.zeros(spatial, dtype=np.int64)
    stride = 1
    for axis in reversed(range(len(spatial))):
        coordinate = np.arange(spatial[axis]) // patch_size
        shape = [1] * len(spatial)
        shape[axis] = spatial[axis]
        index = index + coordinate.reshape(shape) * stride
        stride *= grid[axis]
    return index, stride


def perturbed_values(x: np.ndarray, perturbation: str, rng: np.random.Generator, channel_axis: int | None,
                     patch_size: int, fill: float = 0.0) -> np.ndarray:
    """What a perturbed patch holds, for the whole input at once (so a patch gets the same values at
    every step): uniform noise over the sample's value range, a Gaussian blur (sigma = patch size / 2)
    of the sample, or a constant."""
    if perturbation == "uniform":
        axes = tuple(range(1, x.ndim))
        low, high = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
        return (low + (high - low) * rng.random(x.shape)).astype(x.dtype)
    if perturbation == "constant":
        return np.full_like(x, fill)
    if perturbation == "blur":
        spatial_axes = [a for a in range(1, x.ndim) if a != (channel_axis % x.ndim if channel_axis is not None else None)]
        sigma = max(patch_size / 2.0, 0.5)
        radius = int(np.ceil(3 * sigma))
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        taps /= taps.sum()
        blurred = x.astype(np.float64)
        for axis in spatial_axes:
            pad = [(0, 0)] * x.ndim
            pad[axis] = (radius, radius)
            padded = np.pad(blurred, pad, mode="reflect" if x.shape[axis] > radius else "edge")
            blurred = np.apply_along_axis(lambda v: np.convolve(v, taps, mode="valid"), axis, padded)
        return blurred.astype(x.dtype)
    raise ValueError(f"unknown perturbation '{perturbation}'; choose one of {', '.join(PERTURBATIONS)}")


def selectivity(logits_of, x: np.ndarray, heatmaps: dict[str, np.ndarray], targets: np.ndarray,
                patch_size: int = 4, perturbation: str = "uniform", steps: int | None = None,
                channel_axis: int | None = 1, batch_size: int = 64, seed: int = 0, fill: float = 0.0,
                random_baseline: bool = True, show_progress: bool = False) -> SelectivityResult:
    """MoRF and LeRF curves for each heatmap, and a random ordering.

    logits_of: a function batch -> logits [batch, classes] (Explainer.logits: the plain forward model).
    x: [N, ...] inputs; heatmaps: name -> relevance shaped like x (summed over channel_axis here) or
    already [N, *spatial]. targets: the class followed, per sample.
    steps: how many perturbation steps L (default every patch, at most 100): step k perturbs the
    first round(k * patches / L) patches of the ordering.
    """
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation '{perturbation}'; choose one of {', '.join(PERTURBATIONS)}")
    if patch_size < 1:
        raise ValueError("patch_size must be at least 1")
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    channel = channel_axis % x.ndim if channel_axis is not None and x.ndim > 2 else None
    spatial = tuple(s for a, s in enumerate(x.shape) if a not in (0, channel))
    index, n_patches = patch_index(spatial, patch_size)
    steps = min(n_patches, 100) if steps is None else max(1, min(int(steps), n_patches))
    flipped_after = np.round(np.arange(steps + 1) * n_patches / steps).astype(int)
    rng = np.random.default_rng(seed)
    replacement = perturbed_values(x, perturbation, rng, channel, patch_size, fill)

    orderings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, heat in heatmaps.items():
        heat = np.asarray(heat, dtype=np.float64)
        if heat.shape == x.shape and channel is not None:
            heat = heat.sum(axis=channel)
        if heat.shape != (n,) + spatial:
            raise ValueError(f"heatmap '{name}' has shape {heat.shape}; expected {x.shape} or {(n,) + spatial}")
        scores = patch_scores(heat, patch_size)
        morf = np.argsort(-scores, axis=1, kind="stable")
        lerf = np.argsort(scores, axis=1, kind="stable")
        orderings[name] = (morf, lerf)
    if random_baseline:
        random_order = np.stack([rng.permutation(n_patches) for _ in range(n)])
        orderings["random"] = (random_order, random_order[:, ::-1])

    jobs = [(name, which) for name in orderings for which in (0, 1) if not (name == "random" and which == 1)]
    curves = {name: [np.zeros((n, steps + 1)), np.zeros((n, steps + 1))] for name in orderings}
    targets = np.asarray(targets).reshape(n)
    bar = progress_bar(total=len(jobs) * n, desc="pixel-flipping", enabled=show_progress)
    for name, which in jobs:
        for i in range(n):
            order = orderings[name][which][i]
            curves[name][which][i] = _curve(logits_of, x[i], replacement[i], index, order, flipped_after,
                                            channel, int(targets[i]), batch_size)
            bar.update(1)
    bar.close()
    if random_baseline:
        curves["random"][1] = curves["random"][0]  # one random ordering, drawn once, read both ways
    result = [SelectivityCurves(name, morf=c[0], lerf=c[1]) for name, c in curves.items()]
    return SelectivityResult(curves=result, fractions=flipped_after / n_patches, targets=targets,
                             patch_size=patch_size, perturbation=perturbation,
                             settings={"steps": steps, "patches": n_patches, "seed": seed})


def _curve(logits_of, sample, replacement, index, order, flipped_after, channel, target, batch_size) -> np.ndarray:
    """f(x_k) for k = 0..L for one sample and one ordering, the perturbed inputs run in batches."""
    # the step at which each pixel is perturbed: a pixel of the j-th patch in the order goes at the
    # first step k with flipped_after[k] > j
    step_of_patch = np.empty(len(order), dtype=np.int64)
    step_of_patch[order] = np.searchsorted(flipped_after, np.arange(len(order)), side="right")
    pixel_step = step_of_patch[index]
    if channel is not None:
        pixel_step = np.expand_dims(pixel_step, channel - 1)
    values = []
    for start in range(0, len(flipped_after), batch_size):
        ks = np.arange(start, min(start + batch_size, len(flipped_after)))
        perturbed = np.where(pixel_step[None] <= ks.reshape((-1,) + (1,) * sample.ndim), replacement[None], sample[None])
        values.append(logits_of(perturbed.astype(np.float32))[:, target])
    return np.concatenate(values)


def pixel_flipping(explainer, x: np.ndarray, target=None, mode: str = "logit", gradient_baseline: bool = True,
                   **options) -> SelectivityResult:
    """Selectivity of `explainer`'s heatmaps, with random and gradient x input orderings in the same run.

    Gradient x input is computed as LRP-0 on the same model, which equals it exactly on networks of
    ReLU/MaxPool layers (elsewhere gated ops hold their gate constant). options: see selectivity().
    """
    result = explainer.explain(x, target=target, mode=mode)
    heatmaps = {f"LRP {explainer.composite!r}": result.relevance}
    if gradient_baseline:
        heatmaps["gradient × input"] = explainer.replace(composite="lrp0").explain(x, target=result.target).relevance
    return selectivity(explainer.logits, x, heatmaps, result.target, **options)
