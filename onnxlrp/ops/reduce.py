"""ReduceMean / ReduceSum over non-batch axes: Norm, R_x = x * J^T [R / stab(y)] (docs/rules.md)."""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOpError
from .context import NodeContext
from .registry import register


def _reduced_axes(ctx: NodeContext, rank: int) -> list[int]:
    axes = ctx.attr("axes")
    if axes is None and len(ctx.node.input) > 1 and ctx.node.input[1]:
        axes = ctx.const(1)
        if axes is None:
            raise UnsupportedOpError(ctx.node.op_type, ctx.name, "its axes are computed at run time")
    if axes is None or len(axes) == 0:
        if int(ctx.attr("noop_with_empty_axes", 0)):
            return []
        axes = range(rank)
    axes = sorted(int(a) % rank for a in axes)
    if 0 in axes:
        raise UnsupportedOpError(ctx.node.op_type, ctx.name, "it reduces over the batch axis; onnxlrp explains each "
                                 "sample on its own")
    return axes


@register("ReduceMean", "ReduceSum")
def reduce(ctx: NodeContext):
    """Norm"""
    eps = ctx.norm_stabilizer()
    if eps is None:
        raise UnsupportedOpError(ctx.node.op_type, ctx.name, "Pass cannot undo a reduction; use Norm")
    x_shape = ctx.static_shape(ctx.x())
    axes = _reduced_axes(ctx, len(x_shape))
    b = ctx.b
    s = b.divide(ctx.R(), ctx.y(), eps)
    if axes and not int(ctx.attr("keepdims", 1)):
        s = b.op("Unsqueeze", [s, b.ints(axes)])
    if ctx.node.op_type == "ReduceMean" and axes:
        s = b.op("Mul", [s, b.scalar(1.0 / float(np.prod([x_shape[a] for a in axes])))])
    return [b.op("Mul", [ctx.x(), s])] + [None] * (len(ctx.node.input) - 1)
