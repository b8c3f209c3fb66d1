"""Element-wise arithmetic: Add, Sub, Sum, Neg (residual joins, biases, masks, embeddings added), and
Mul, Div (scalings by constants; products of two computed tensors are bilinear, see linear.share).

Their VJP is unchanged (docs/rules.md: residual joins and constant operands); a constant operand receives
nothing, and broadcasting is summed back."""
from __future__ import annotations

from ..errors import UnsupportedOpError
from .context import GradContext
from .linear import share
from .registry import register_vjp


@register_vjp("Add", "Sum")
def add(ctx: GradContext):
    return [ctx.unbroadcast(ctx.g(), i) if ctx.carries_gradient(i) else None for i in range(len(ctx.node.input))]


@register_vjp("Sub")
def sub(ctx: GradContext):
    result = add(ctx)
    if result[1] is not None:
        result[1] = ctx.b.op("Neg", [result[1]])
    return result


@register_vjp("Neg")
def neg(ctx: GradContext):
    return ctx.only(0, ctx.b.op("Neg", [ctx.g()]))


@register_vjp("Mul")
def mul(ctx: GradContext):
    """g_a = g * b, g_b = g * a."""
    a, other = ctx.x(0), ctx.x(1)
    result = ctx.none()
    if ctx.carries_gradient(0):
        result[0] = ctx.unbroadcast(ctx.b.op("Mul", [ctx.g(), other]), 0)
    if ctx.carries_gradient(1):
        result[1] = ctx.unbroadcast(ctx.b.op("Mul", [ctx.g(), a]), 1)
    return share(ctx, result)


@register_vjp("Div")
def div(ctx: GradContext):
    """g_a = g / b; a computed divisor must be held constant (a normaliser), else it is not supported."""
    if ctx.carries_gradient(1):
        raise UnsupportedOpError("Div", ctx.name, "it divides by a computed tensor that is not a recognised "
                                 "normaliser (LayerNorm/RMSNorm sigma); no AttnLRP rule covers it")
    return ctx.only(0, ctx.unbroadcast(ctx.b.op("Div", [ctx.g(), ctx.x(1)]), 0))
