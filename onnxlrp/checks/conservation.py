"""Conservation and positivity per layer.

For each weighted layer (from the logits down to the input): the sum of the relevance it sends to its
input, relative to the output relevance (1 everywhere for a conserving rule on a bias-free net;
biases and stabilisers absorb the rest), and the share of negative relevance, sum(R-) / sum(|R|)
(0 for ZPlus, WSquare and Flat when the output relevance is positive).

A layer's sum covers the relevance that passes through that layer only: inside a residual block or an
Inception branch it is the branch's share, not the whole depth's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..compiler import LAYER_SUM_PREFIX


@dataclass
class LayerConservation:
    label: str              # "output", a layer's node name, or "input/<name>"
    rule: str
    relative_sum: np.ndarray   # per sample: sum(R at this layer's input) / sum(R at the output)
    negative_share: np.ndarray  # per sample: sum(R-) / sum(|R|)


@dataclass
class ConservationReport:
    layers: list[LayerConservation]

    def table(self) -> str:
        """A Markdown table: mean (min..max over samples) of each figure, from the output down."""
        lines = ["| layer | rule | relative sum | negative share |", "|---|---|---|---|"]
        for row in self.layers:
            lines.append(f"| {row.label} | {row.rule} | {_spread(row.relative_sum)} | {_spread(row.negative_share)} |")
        return "\n".join(lines)

    def plot(self, path) -> bool:
        """The relative development of the relevance sum over the layers as a PNG; False without matplotlib."""
        from ..files import save_atomic
        from ..pictures import pyplot_or_none

        plt = pyplot_or_none()
        if plt is None:
            return False
        sums = np.stack([row.relative_sum for row in self.layers])
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(self.layers)), 3.5))
        ax.plot(range(len(self.layers)), sums, color="tab:blue", alpha=0.35, linewidth=1)
        ax.plot(range(len(self.layers)), sums.mean(axis=1), color="tab:blue", linewidth=2, label="mean over samples")
        ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(self.layers)))
        ax.set_xticklabels([row.label for row in self.layers], rotation=70, ha="right", fontsize=7)
        ax.set_ylabel("sum of relevance / output")
        ax.set_title("relative development of the relevance sum, output to input")
        ax.legend(fontsize=8)
        fig.tight_layout()
        save_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
        plt.close(fig)
        return True


def _spread(values: np.ndarray) -> str:
    return f"{values.mean():.4f} ({values.min():.4f}..{values.max():.4f})"


def conservation(explainer, x, target=None, mode: str = "logit") -> ConservationReport:
    """Run `explainer` (an Explainer made with layer_sums=True) on `x` and tabulate the layer sums."""
    if not explainer.layer_sums:
        raise ValueError("conservation needs an Explainer(..., layer_sums=True)")
    result = explainer.explain(x, target=target, mode=mode)
    compiled = explainer.compiled(mode)
    rules = {name: rule for name, _, rule in compiled.layer_rules}
    names = compiled.layer_sum_outputs
    # stored as: output, weighted layers from the input side up, inputs
    output, layers, inputs = names[0], names[1:-len(compiled.relevance_outputs)], names[-len(compiled.relevance_outputs):]
    total = result.layer_sums[output]
    safe_total = np.where(total == 0, 1.0, total)
    rows = []
    for name in [output] + list(reversed(layers)) + inputs:
        label = name[len(LAYER_SUM_PREFIX):]
        sums, absolute = result.layer_sums[name], result.layer_abs_sums[name]
        negative = (absolute - sums) / 2
        rows.append(LayerConservation(label=label, rule=rules.get(label, ""),
                                      relative_sum=sums / safe_total,
                                      negative_share=np.where(absolute > 0, negative / np.maximum(absolute, 1e-30), 0.0)))
    return ConservationReport(rows)
