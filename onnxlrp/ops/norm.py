"""LayerNormalization (kind "norm"): the normaliser 1/sigma held constant, which makes the layer linear in its
input, y = w * (x - mean(x)) / sigma + b (docs/rules.md); Norm by default, and its J^T is
g_x = (1/sigma) * (w g - mean(w g)) over the normalised axes, sigma from the forward node. Decomposed LayerNorm
and RMSNorm chains need no family of their own: the analysis holds their sigma constant and the rest of the
chain is ordinary arithmetic."""
from __future__ import annotations

from ..errors import UnsupportedOpError
from .context import Context
from .registry import family, vjp

LAYER_NORM = family("layer normalisation", "LayerNormalization", kind="norm")


def reduce_mean(ctx: Context, tensor: str, axes: list[int]) -> str:
    b = ctx.b
    if ctx.opset >= 18:
        return b.op("ReduceMean", [tensor, b.ints(axes)], keepdims=1)
    return b.op("ReduceMean", [tensor], axes=axes, keepdims=1)


@vjp(LAYER_NORM)
def layer_norm(ctx: Context, seeds):
    rank = ctx.rank(ctx.x())
    if rank is None:
        raise UnsupportedOpError("LayerNormalization", ctx.name, "the rank of its input is unknown")
    axis = int(ctx.attr("axis", -1)) % rank
    if axis == 0:
        raise UnsupportedOpError("LayerNormalization", ctx.name, "it normalises over the batch axis")
    axes = list(range(axis, rank))
    b = ctx.b
    inv_std = ctx.ensure_output(2, "inv_std_dev")
    scaled = b.op("Mul", [seeds[0], ctx.x(1)])
    centred = b.op("Sub", [scaled, reduce_mean(ctx, scaled, axes)])
    return ctx.only(0, b.op("Mul", [centred, inv_std], hint="layer_norm"))
