"""Cosine-similarity convergence (Sixt et al. 2020, "When explanations lie: why many modified BP
attributions fail") and the class-sensitivity check.

Random normal relevance vectors are injected at the logits and propagated with the composite. At every
weighted layer's input the relevance of two different injections is compared, channel vector by
channel vector (the C values at one spatial location; a dense layer's input is one vector):

    median over pairs and locations of |cos(R_a[:, h, w], R_b[:, h, w])|

Random vectors of that length give the baseline (about 0.67 / sqrt(C)). An explanation whose lower
layers approach 1 no longer depends on where the relevance started: that layer ignores the class.
Sixt et al. find this for z+ / alpha1beta0 (and so for ZPlus-heavy composites), not for LRP-0 or
epsilon. The class-sensitivity check compares the heatmap for the predicted class with the heatmap for a
random other class (cosine similarity of the input relevance, both started from relevance 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..compiler import LAYER_RELEVANCE_PREFIX
from ..progress import progress_bar
from .similarity import cosine


@dataclass
class LayerConvergence:
    label: str
    rule: str
    vector_length: int          # C, the channel count compared at each location
    median_abs_cosine: float
    baseline: float             # the same statistic for random normal vectors of that length


@dataclass
class ConvergenceResult:
    layers: list[LayerConvergence]   # from the logits down to the input
    injections: int
    class_sensitivity: np.ndarray | None = None   # per sample: cos(R_target, R_other)

    def table(self) -> str:
        lines = ["| layer | rule | C | median abs cosine | random baseline |", "|---|---|---|---|---|"]
        for row in self.layers:
            lines.append(f"| {row.label} | {row.rule} | {row.vector_length} | {row.median_abs_cosine:.3f} "
                         f"| {row.baseline:.3f} |")
        if self.class_sensitivity is not None:
            s = self.class_sensitivity
            lines.append("")
            lines.append(f"class sensitivity: cosine similarity of the heatmaps for the target and a random other "
                         f"class, mean {s.mean():.3f} (min {s.min():.3f}, max {s.max():.3f}); near 1 means the "
                         "explanation does not depend on the class")
        return "\n".join(lines)

    def plot(self, path, name: str = "composite", others: dict[str, "ConvergenceResult"] | None = None) -> bool:
        """Median |cos| per layer against the random baseline, with other composites' results on the same
        model beside it (others: name -> result); False without matplotlib."""
        from ..pictures import plot_layers

        series = {name: np.array([r.median_abs_cosine for r in self.layers])}
        for other_name, other in (others or {}).items():
            series[other_name] = np.array([r.median_abs_cosine for r in other.layers])
        series["random baseline"] = np.array([r.baseline for r in self.layers])
        return plot_layers(path, [row.label for row in self.layers], series, ylabel="median |cosine similarity|",
                           title="cosine-similarity convergence, logits to input", ylim=(0, 1.02))


def channel_vectors(relevance: np.ndarray, channel_axis: int = 1) -> np.ndarray:
    """[M, ...] relevance of M injections -> [M, locations, C]."""
    moved = np.moveaxis(np.asarray(relevance, dtype=np.float64), channel_axis, -1) if relevance.ndim > 2 else relevance
    return moved.reshape(moved.shape[0], -1, moved.shape[-1])


def median_abs_pair_cosine(vectors: np.ndarray) -> float:
    """Median over all pairs a < b of injections and all locations of |cos(v_a, v_b)|; [M, locations, C].
    Pairs with a zero vector (no relevance reached that location) have no angle and are left out; NaN if
    no pair is left."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    unit = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    a, b = np.triu_indices(vectors.shape[0], k=1)
    cosines = np.einsum("plc,plc->pl", unit[a], unit[b])
    defined = (norms[a, :, 0] > 0) & (norms[b, :, 0] > 0)
    return float(np.median(np.abs(cosines[defined]))) if defined.any() else float("nan")


def convergence(explainer, x: np.ndarray, injections: int = 8, seed: int = 0, channel_axis: int = 1,
                class_sensitivity: bool = True, show_progress: bool = False,
                inject_at: str | None = None) -> ConvergenceResult:
    """CSC per layer for each sample of `x`, pooled over samples.

    explainer: an Explainer made with layer_relevances=True. injections: random start vectors per sample.
    inject_at: a tensor of the model to inject at instead of the logits (the layers below it are
    reported; the class-sensitivity check, which needs classes, is left out).
    channel_axis: of the batched input (1 for NCHW, -1 for NHWC). Inside the model the channel axis is
    the op's: 1 at a Conv's input (ONNX convolutions are channels-first, whatever the input layout), the
    last axis at a Gemm/MatMul's input.
    """
    if not explainer.layer_relevances:
        raise ValueError("convergence needs an Explainer(..., layer_relevances=True)")
    if injections < 2:
        raise ValueError("convergence compares pairs: injections must be at least 2")
    x = np.asarray(x, dtype=np.float32)
    rng = np.random.default_rng(seed)
    if inject_at is not None:
        explainer, class_sensitivity = explainer_at(explainer, inject_at), False
    compiled = explainer.compiled("custom")
    rules = {name: rule for name, _, rule in compiled.layer_rules}
    op_types = {name: op for name, op, _ in compiled.layer_rules}
    pooled: dict[str, list[np.ndarray]] = {}
    bar = progress_bar(total=len(x), desc="cosine-similarity convergence", enabled=show_progress)
    for sample in x:
        batch = np.repeat(sample[None], injections, axis=0)
        start = rng.standard_normal((injections,) + tuple(compiled.start_shape)).astype(np.float32)
        result = explainer.explain(batch, mode="custom", output_relevance=start)
        for name in compiled.layer_relevance_outputs:
            label, tensor = name[len(LAYER_RELEVANCE_PREFIX):], result.layer_relevances[name]
            op = op_types.get(label)
            if label.startswith("input/"):
                axis = channel_axis
            elif op is not None:
                axis = 1 if op.startswith("Conv") else -1
            else:  # the start: the logits, or an inner (channels-first) tensor given as inject_at
                axis = 1 if tensor.ndim > 3 else -1
            vectors = channel_vectors(tensor, axis)
            pooled.setdefault(name, []).append(vectors)
        bar.update(1)
    bar.close()
    layers = []
    for name, parts in pooled.items():
        label = name[len(LAYER_RELEVANCE_PREFIX):]
        # pairs only within one sample: stack samples along the location axis
        vectors = np.concatenate(parts, axis=1)
        baseline = median_abs_pair_cosine(rng.standard_normal(vectors.shape))
        layers.append(LayerConvergence(label=label, rule=rules.get(label, ""), vector_length=vectors.shape[-1],
                                       median_abs_cosine=median_abs_pair_cosine(vectors), baseline=baseline))
    sensitivity = _class_sensitivity(explainer, x, rng) if class_sensitivity else None
    return ConvergenceResult(layers=layers, injections=injections, class_sensitivity=sensitivity)


def explainer_at(explainer, tensor: str):
    """An explainer like `explainer` that starts at `tensor` (made a model output) instead of the logits."""
    model = onnx.ModelProto()
    model.CopyFrom(explainer.model)
    produced = {out for node in model.graph.node for out in node.output}
    if tensor not in produced:
        raise ValueError(f"the model has no tensor '{tensor}' to inject at (give a node output name; "
                         "`onnxlrp inspect` lists the nodes)")
    if tensor not in [o.name for o in model.graph.output]:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
        model.graph.output[-1].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return explainer.replace(model=model, output=tensor, layer_relevances=True)


def _class_sensitivity(explainer, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """cos(R for the predicted class, R for a random other class), per sample. Both start from relevance 1
    on their class (mode "one"), so a logit's sign does not flip a heatmap."""
    predicted = explainer.explain(x, mode="one")
    n_classes = explainer.compiled("one").n_classes
    if n_classes < 2:
        return np.ones(len(x))
    others = (predicted.target + rng.integers(1, n_classes, size=len(x))) % n_classes
    other = explainer.explain(x, target=others, mode="one")
    return np.array([cosine(a, b) for a, b in zip(predicted.relevance, other.relevance)])
