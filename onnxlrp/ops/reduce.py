"""ReduceMean / ReduceSum over non-batch axes: linear maps (kind "pool", Norm by default, docs/rules.md); their J^T
spreads each seed over the elements it summed (divided by their count for a mean)."""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOpError
from .context import Context
from .registry import family, vjp

REDUCE = family("reduction", "ReduceMean", "ReduceSum", kind="pool")


def _reduced_axes(ctx: Context, rank: int) -> list[int]:
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
    if 0 in axes and not ctx.batch_fixed:
        raise UnsupportedOpError(ctx.node.op_type, ctx.name, "it reduces over the batch axis; onnxlrp explains each "
                                 "sample on its own")
    return axes


@vjp(REDUCE)
def reduce(ctx: Context, seeds):
    x, b = ctx.x(), ctx.b
    rank = ctx.rank(x)
    if rank is None:
        raise UnsupportedOpError(ctx.op, ctx.name, "the rank of its input is unknown")
    axes = _reduced_axes(ctx, rank)
    seed = seeds[0]
    if axes and not int(ctx.attr("keepdims", 1)):
        seed = b.op("Unsqueeze", [seed, b.ints(axes)])
    if ctx.op == "ReduceMean" and axes:
        x_shape = ctx.shape(x)
        if all(x_shape[a] is not None for a in axes):
            seed = b.op("Mul", [seed, b.scalar(1.0 / float(np.prod([x_shape[a] for a in axes])))])
        else:   # a free dim (a sequence length): the count at run time
            count = b.op("Div", [b.op("Cast", [b.op("Size", [x])], to=1), b.op("Cast", [b.op("Size", [ctx.y()])], to=1)])
            seed = b.op("Div", [seed, count])
    return ctx.only(0, b.op("Expand", [seed, ctx.expand_target(x)]))
