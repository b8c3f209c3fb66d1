"""Contrastive explanations (docs/rules.md, mode "contrastive"): the log-odds of the target class c
against the others.

The dense layer under the logits (z = W a + b) is replaced by the pairwise difference layer
z_(c,c') = (w_c - w_c') a + (b_c - b_c') for every c' != c, whose outputs start with
R_(c,c') = z_(c,c') exp(-z_(c,c')) / sum_(c'' != c) exp(-z_(c,c'')); the layer then sends relevance
down with the rule of the layer it replaced. The pairwise weights depend on each sample's target, so
they are built at run time: W_diff = W[c] - W, one [classes, features] matrix per sample (the c' = c
row is zero and carries no relevance).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .errors import UnsupportedModelError
from .ops.context import Context
from .ops.weighted import LinearMap, propagate
from .rules import Transform


class PairwiseMap(LinearMap):
    """The pairwise difference layer of one dense layer, with per-sample weights [N, C, K]."""

    def __init__(self, ctx: Context, target: str):
        weight, bias = ctx.const(1), ctx.const(2)
        super().__init__(ctx, weight, bias)
        b = ctx.b
        self.n_in = weight.shape[1]
        w = b.const(weight, hint="W")
        self.w_diff = b.op("Sub", [b.op("Unsqueeze", [b.op("Gather", [w, target], axis=0), b.ints([1])]), w],
                           hint="W_pairwise")
        self.b_diff = None
        if bias is not None:
            bias_name = b.const(np.broadcast_to(bias.reshape(-1), (weight.shape[0],)), hint="b")
            self.b_diff = b.op("Sub", [b.op("Unsqueeze", [b.op("Gather", [bias_name, target], axis=0), b.ints([1])]),
                                       bias_name], hint="b_pairwise")
        # z_(c,c') = z_c - z_c': the forward logits already hold it
        logits = ctx.y()
        chosen = b.op("GatherElements", [logits, b.op("Unsqueeze", [target, b.ints([1])])], axis=1)
        self.z = b.op("Sub", [chosen, logits], hint="z_pairwise")

    def output(self) -> str:
        return self.z

    def _transformed(self, tensor: str, transform: Transform) -> str:
        b = self.ctx.b
        if transform.kind == "identity":
            return tensor
        if transform.kind == "positive":
            return b.op("Relu", [tensor])
        if transform.kind == "negative":
            return b.op("Min", [tensor, b.scalar(0.0)])
        if transform.kind in ("gamma_up", "gamma_down"):
            part = b.op("Relu", [tensor]) if transform.kind == "gamma_up" else b.op("Min", [tensor, b.scalar(0.0)])
            return b.op("Add", [tensor, b.op("Mul", [part, b.scalar(transform.gamma)])])
        if transform.kind == "square":
            return b.op("Mul", [tensor, tensor])
        raise UnsupportedModelError(f"contrastive mode: the rule of the layer under the logits uses the weight "
                                    f"transform {transform!r}, which the pairwise layer does not support")

    def weight_name(self, transform: Transform) -> str:
        if transform not in self._weights:
            self._weights[transform] = self._transformed(self.w_diff, transform)
        return self._weights[transform]

    def bias_name(self, transform: Transform | None, offset: float = 0.0) -> str | None:
        assert offset == 0.0, "the pairwise layer adds its offset in forward()"
        if transform is None or self.b_diff is None:
            return None
        if transform not in self._biases:
            self._biases[transform] = self._transformed(self.b_diff, transform)
        return self._biases[transform]

    def sample_shape(self):
        return (self.n_in,)

    def forward(self, inp, weight, bias, offset=0.0):
        b = self.ctx.b
        column = b.op("Unsqueeze", [inp, b.ints([2])])                       # [N, K, 1]
        z = b.op("Squeeze", [b.op("MatMul", [self.weight_name(weight), column]), b.ints([2])])  # [N, C]
        bias_name = self.bias_name(bias)
        z = b.op("Add", [z, bias_name]) if bias_name else z
        return b.op("Add", [z, b.scalar(offset)]) if offset else z

    def forward_constant(self, inp, weight, bias):
        raise UnsupportedModelError("contrastive mode: the layer under the logits gets a rule with an "
                                    "input-independent term (Flat, WSquare, ZBox); give it Epsilon, ZPlus, "
                                    "AlphaBeta or Gamma")

    def transpose(self, s, weight):
        b = self.ctx.b
        row = b.op("Unsqueeze", [s, b.ints([1])])                            # [N, 1, C]
        return b.op("Squeeze", [b.op("MatMul", [row, self.weight_name(weight)]), b.ints([1])])  # [N, K]


def start_relevance(ctx: Context, layer: PairwiseMap, target: str, n_classes: int) -> str:
    """R_(c,c') = z exp(-z) / sum_(c'' != c) exp(-z), zero for c' = c (a softmax over -z without c)."""
    b = ctx.b
    others = b.op("Sub", [b.scalar(1.0), b.op("OneHot", [target, b.ints([n_classes]),
                                                          b.const(np.array([0.0, 1.0], np.float32), hint="off_on")],
                                               axis=-1)], hint="others")
    masked = b.op("Where", [b.op("Cast", [others], to=9), b.op("Neg", [layer.z]), b.scalar(-np.inf)])
    weights = b.op("Softmax", [masked], axis=1)       # exp(-z) / sum over c'' != c; exactly 0 at c
    return b.op("Mul", [layer.z, weights], hint="start")


def contrastive_relevance(ctx: Context, target: str, n_classes: int) -> tuple[list, str]:
    """(relevance per input of the dense layer, as a handler returns it; the start relevance on the
    pairwise outputs)."""
    layer = PairwiseMap(ctx, target)
    start = start_relevance(ctx, layer, target, n_classes)
    layer.ctx = replace(ctx, signals=[start])
    return [propagate(layer.ctx, layer, ctx.rule)] + [None] * (len(ctx.node.input) - 1), start
