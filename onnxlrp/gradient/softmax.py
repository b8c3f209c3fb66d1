"""Softmax on any axis: the unchanged VJP, g_x = s * (g_s - sum_j s_j g_s,j) (docs/rules.md; in relevance form
R_x = x * (R_s - s * sum_j R_s,j)). Masked entries have s = 0 and send nothing, so -inf and finfo.min
masks never make NaN: the product with x is only taken at the explained input."""
from __future__ import annotations

from .context import GradContext
from .registry import register_vjp


@register_vjp("Softmax")
def softmax(ctx: GradContext):
    b, s, g = ctx.b, ctx.y(), ctx.g()
    axis = int(ctx.attr("axis", -1 if ctx.opset >= 13 else 1))
    if ctx.opset < 13:
        from ..errors import UnsupportedOpError
        raise UnsupportedOpError("Softmax", ctx.name, "opset < 13 Softmax flattens its input; re-export with opset >= 13")
    weighted = b.op("ReduceSum", [b.op("Mul", [s, g]), b.ints([axis])], keepdims=1)
    return ctx.only(0, b.op("Mul", [s, b.op("Sub", [g, weighted])], hint="softmax"))
