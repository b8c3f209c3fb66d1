"""Model-parameter randomisation sanity check (Adebayo et al. 2018, "Sanity checks for saliency maps").

The weights (and biases) of the weighted layers (Conv, ConvTranspose, Gemm, MatMul with a constant
weight) are replaced by random normal values of the same standard deviation, then the input is
explained again for the same target:

    cascading    the top layer, then the top two, ... down to every layer
    independent  one layer at a time, the others left trained

Each row reports how similar the new heatmap is to the original one (Spearman rank correlation, and
SSIM taken as max(SSIM(a, b), SSIM(a, -b))), per sample. An explanation that depends on what the model
learned drops towards 0 as layers are randomised; one that stays near 1 reflects the input (edges)
more than the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..heatmap import relevance_map
from ..model import load_model
from ..progress import progress_bar
from .similarity import spearman, ssim_sign_free

ORDERS = ("cascading", "independent")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class RandomisationRow:
    layers: list[str]        # the layers randomised for this row (empty: the original model)
    spearman: np.ndarray     # per sample
    ssim: np.ndarray         # per sample

    @property
    def label(self) -> str:
        if not self.layers:
            return "original"
        return self.layers[-1] if len(self.layers) == 1 else f"… {self.layers[-1]} ({len(self.layers)} layers)"


@dataclass
class RandomisationResult:
    order: str
    rows: list[RandomisationRow]
    heatmaps: list[np.ndarray] = field(default_factory=list)  # per row: [N, *spatial] maps

    def table(self) -> str:
        lines = [f"| randomised ({self.order}) | Spearman | SSIM (sign-free) |", "|---|---|---|"]
        for row in self.rows:
            lines.append(f"| {row.label} | {_spread(row.spearman)} | {_spread(row.ssim)} |")
        return "\n".join(lines)

    def plot(self, path) -> bool:
        from ..pictures import plot_layers

        labels = [row.layers[-1] if row.layers else "original" for row in self.rows]
        return plot_layers(path, labels, {"Spearman": np.array([r.spearman.mean() for r in self.rows]),
                                          "SSIM": np.array([r.ssim.mean() for r in self.rows])},
                           ylabel="similarity to the original heatmap",
                           title=f"model-parameter randomisation ({self.order}, from the top)", ylim=(-0.2, 1.05))


def _spread(values: np.ndarray) -> str:
    return f"{values.mean():.3f} ({values.min():.3f}..{values.max():.3f})"


def weighted_layers(model: onnx.ModelProto) -> list[tuple[str, list[str]]]:
    """(node name, its constant weight and bias initialisers) of each weighted layer, from the top down."""
    initialisers = {t.name for t in model.graph.initializer}
    layers = []
    for k, node in enumerate(model.graph.node):
        if node.op_type not in WEIGHTED_OPS:
            continue
        params = [name for name in node.input[1:] if name in initialisers]
        if params:
            layers.append((node.name or f"{node.op_type}_{k}", params))
    return layers[::-1]


def randomised_copy(model: onnx.ModelProto, parameters: set[str], rng: np.random.Generator) -> onnx.ModelProto:
    """A copy of `model` whose named initialisers are random normal with each one's own std (1e-2 for a
    constant tensor)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        if tensor.name in parameters:
            value = numpy_helper.to_array(tensor)
            std = float(value.std()) or 1e-2
            tensor.CopyFrom(numpy_helper.from_array(rng.normal(0.0, std, value.shape).astype(value.dtype), tensor.name))
    return copy


def randomisation(model, x: np.ndarray, make_explainer, target=None, order: str = "cascading", seed: int = 0,
                  channel_axis: int | None = 0, max_layers: int | None = None,
                  show_progress: bool = False) -> RandomisationResult:
    """Re-explain `x` on randomised copies of `model`.

    make_explainer: a function model -> Explainer (so the composite, providers, output are the caller's).
    target: the classes explained; default the original model's predictions, kept for every copy.
    channel_axis: of one sample (0 for NCHW inputs, -1 for NHWC), summed for the 2-D maps compared.
    max_layers: randomise only the top max_layers layers (default all).
    """
    if order not in ORDERS:
        raise ValueError(f"unknown order '{order}'; choose one of {', '.join(ORDERS)}")
    model = load_model(model, check=False)
    layers = weighted_layers(model)
    if not layers:
        raise ValueError("the model has no weighted layer with constant weights to randomise")
    layers = layers[:max_layers] if max_layers else layers
    original = make_explainer(model).explain(x, target=target)
    target = original.target
    reference = [relevance_map(r, channel_axis) for r in original.relevance]
    rows = [RandomisationRow([], np.ones(len(x)), np.ones(len(x)))]
    heatmaps = [np.stack(reference)]
    rng = np.random.default_rng(seed)
    bar = progress_bar(total=len(layers), desc=f"randomisation ({order})", enabled=show_progress)
    for k, (name, _) in enumerate(layers):
        chosen = layers[:k + 1] if order == "cascading" else [layers[k]]
        parameters = {p for _, params in chosen for p in params}
        relevance = make_explainer(randomised_copy(model, parameters, rng)).explain(x, target=target).relevance
        maps = [relevance_map(r, channel_axis) for r in relevance]
        rows.append(RandomisationRow([n for n, _ in chosen],
                                     np.array([spearman(a, b) for a, b in zip(reference, maps)]),
                                     np.array([ssim_sign_free(a, b) for a, b in zip(reference, maps)])))
        heatmaps.append(np.stack(maps))
        bar.update(1)
    bar.close()
    return RandomisationResult(order=order, rows=rows, heatmaps=heatmaps)
