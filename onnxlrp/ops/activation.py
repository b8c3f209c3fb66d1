"""Element-wise activations and unfolded normalisations: Pass (R_x = R), as in Zennit."""
from __future__ import annotations

from .context import NodeContext
from .registry import register

PASS_OPS = ("Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Clip", "Elu", "Selu", "Celu", "Softplus", "Softsign",
            "HardSigmoid", "HardSwish", "Gelu", "Mish", "ThresholdedRelu",
            "BatchNormalization", "LRN")


@register(*PASS_OPS)
def pass_through(ctx: NodeContext):
    """Pass"""
    return [ctx.R()] + [None] * (len(ctx.node.input) - 1)
