"""Ops that only move elements: relevance goes back exactly where each element came from."""
from __future__ import annotations

import numpy as np

from .context import NodeContext
from .registry import register


@register("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def reshape(ctx: NodeContext):
    """routing (reshape back)"""
    return [ctx.reshape_back(ctx.R())] + [None] * (len(ctx.node.input) - 1)


@register("Transpose")
def transpose(ctx: NodeContext):
    """routing (inverse transpose)"""
    perm = ctx.attr("perm")
    if perm is None:
        rank = len(ctx.shape(ctx.x()))
        perm = list(reversed(range(rank)))
    inverse = [int(i) for i in np.argsort(perm)]
    return [ctx.b.op("Transpose", [ctx.R()], perm=inverse)]


@register("Identity", "Dropout", "Cast")
def identity(ctx: NodeContext):
    """routing (copy)"""
    return [ctx.R()] + [None] * (len(ctx.node.input) - 1)
