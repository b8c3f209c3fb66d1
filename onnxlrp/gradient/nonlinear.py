"""Element-wise non-linearities get the identity rule (docs/rules.md): g_x = g_y * f(x) / x, in relevance form
R_x = R_y. This covers single ops (Gelu, Tanh, Relu, Sigmoid, ...) and the blocks patterns.py finds
(x * h(x): Erf- and tanh-GELU chains, SiLU, Mish), whose x is the block's input.

The divisor is x + 1e-10, as LXT's identity_rule_implicit has it."""
from __future__ import annotations

from .context import GradContext
from .patterns import NONLINEAR_OPS
from .registry import register_vjp

IDENTITY_EPSILON = 1e-10


def identity_rule(ctx: GradContext, x: str, y: str, g: str) -> str:
    b = ctx.b
    ratio = b.op("Div", [y, b.op("Add", [x, b.scalar(IDENTITY_EPSILON)])], hint="identity_rule")
    return b.op("Mul", [g, ratio])


@register_vjp(*NONLINEAR_OPS)
def elementwise(ctx: GradContext):
    return ctx.only(0, identity_rule(ctx, ctx.x(), ctx.y(), ctx.g()))
