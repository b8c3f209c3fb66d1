"""Normalisation and reductions: LayerNormalization with its normaliser held constant (docs/rules.md: LN becomes
y = w * (x - mean(x)) / sigma + b, linear in x), ReduceMean and ReduceSum.

Decomposed LayerNorm and RMSNorm chains need no handler of their own: their sigma is held constant
(patterns.normalisers) and the rest of the chain is ordinary arithmetic."""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOpError
from .context import GradContext
from .registry import register_vjp


def reduce_mean(ctx: GradContext, tensor: str, axes: list[int]) -> str:
    b = ctx.b
    if ctx.opset >= 18:
        return b.op("ReduceMean", [tensor, b.ints(axes)], keepdims=1)
    return b.op("ReduceMean", [tensor], axes=axes, keepdims=1)


@register_vjp("LayerNormalization")
def layer_norm(ctx: GradContext):
    """g_x = (1/sigma) * (w g - mean(w g)) over the normalised axes; sigma from the forward node."""
    rank = ctx.rank(ctx.x())
    if rank is None:
        raise UnsupportedOpError("LayerNormalization", ctx.name, "the rank of its input is unknown")
    axis = int(ctx.attr("axis", -1)) % rank
    axes = list(range(axis, rank))
    b = ctx.b
    inv_std = ctx.ensure_output(2, "inv_std_dev")
    scaled = b.op("Mul", [ctx.g(), ctx.x(1)])
    centred = b.op("Sub", [scaled, reduce_mean(ctx, scaled, axes)])
    return ctx.only(0, b.op("Mul", [centred, inv_std], hint="layer_norm"))


def _reduce_axes(ctx: GradContext, rank: int) -> list[int] | None:
    """The reduced axes, or None for all of them."""
    if len(ctx.node.input) > 1 and ctx.node.input[1]:
        axes = ctx.const(1)
        if axes is None:
            raise UnsupportedOpError(ctx.op, ctx.name, "its axes are computed at run time")
        axes = [int(a) for a in np.ravel(axes)]
    else:
        axes = ctx.attr("axes")
    if not axes:
        if int(ctx.attr("noop_with_empty_axes", 0)):
            return []
        return None
    return sorted(int(a) % rank for a in axes)


@register_vjp("ReduceMean", "ReduceSum")
def reduce(ctx: GradContext):
    """Each reduced element gets the gradient of its sum (divided by the count for a mean)."""
    x, y, b = ctx.x(), ctx.y(), ctx.b
    rank = ctx.rank(x)
    if rank is None:
        raise UnsupportedOpError(ctx.op, ctx.name, "the rank of its input is unknown")
    axes = _reduce_axes(ctx, rank)
    axes = list(range(rank)) if axes is None else axes
    g = ctx.g()
    if axes and not int(ctx.attr("keepdims", 1)):
        g = b.op("Unsqueeze", [g, b.ints(axes)])
    gx = b.op("Expand", [g, b.op("Shape", [x])])
    if ctx.op == "ReduceMean" and axes:
        count = b.op("Div", [b.op("Cast", [b.op("Size", [x])], to=1), b.op("Cast", [b.op("Size", [y])], to=1)])
        gx = b.op("Div", [gx, count])
    return ctx.only(0, gx)
