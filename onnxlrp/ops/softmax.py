"""Softmax on any axis (kind "softmax"): Norm by default, whose J^T is the unchanged VJP,
g_x = s * (g_s - sum_j s_j g_s,j) (docs/rules.md; in relevance form R_x = x * (R_s - s * sum_j R_s,j) up to the
stabiliser). Masked entries have s = 0 and send nothing, so -inf and finfo.min masks never make NaN. Under
rules.Constant (CP-LRP) the probabilities are held constant: nothing flows back through the Softmax."""
from __future__ import annotations

from ..errors import UnsupportedOpError
from ..rules import Constant
from .context import Context
from .registry import family, vjp

SOFTMAX = family("softmax", "Softmax", kind="softmax")
SOFTMAX.holds = lambda node, analysis, rule: [node.output[0]] if isinstance(rule, Constant) else []


@vjp(SOFTMAX)
def softmax(ctx: Context, seeds):
    if ctx.opset < 13:
        raise UnsupportedOpError("Softmax", ctx.name, "opset < 13 Softmax flattens its input; re-export with opset >= 13")
    b, s, g = ctx.b, ctx.y(), seeds[0]
    axis = int(ctx.attr("axis", -1))
    weighted = b.op("ReduceSum", [b.op("Mul", [s, g]), b.ints([axis])], keepdims=1)
    return ctx.only(0, b.op("Mul", [s, b.op("Sub", [g, weighted])], hint="softmax"))
