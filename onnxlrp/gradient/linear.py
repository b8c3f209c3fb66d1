"""Linear layers and products: MatMul, Gemm, Conv.

With a constant operand they are linear layers: the unchanged VJP (LXT's efficient Epsilon), or, where
the composite gives the layer another rule (Gamma, ...), that rule in relevance form on R = y * g,
divided back by the input (g_x = R_x / x), as LXT does with Zennit's rules. With two computed operands
they are bilinear: see `share`.
"""
from __future__ import annotations

import numpy as np

from .. import rules as R
from ..errors import UnsupportedOpError
from .context import GradContext
from .registry import register_vjp


def share(ctx: GradContext, gradients: list[str | None]) -> list[str | None]:
    """The uniform rule of AttnLRP on a product of two computed tensors: each operand gets half."""
    share = ctx.analysis.bilinear.get(ctx.name)
    if share is None:
        return gradients
    return [ctx.b.op("Mul", [g, ctx.b.scalar(share)], hint="uniform") if g else None for g in gradients]


def _is_plain_gradient(rule) -> bool:
    """Epsilon at its default (or LRP-0) is the layer's plain gradient, as LXT's efficient mode has it
    (they differ by O(eps / z))."""
    return rule is None or (isinstance(rule, R.Epsilon) and rule.epsilon <= R.DEFAULT_STABILIZER
                            and not rule.zero_bias)


def by_rule(ctx: GradContext, rule) -> list[str | None]:
    """Another rule on a linear layer, as LXT applies Zennit's rules in gradient form: R = y * g into the
    rule's relevance form (onnxlrp.ops), then g_x = R_x / stab(x) with a 1e-10 stabiliser."""
    from ..ops import handler_for
    from ..ops.context import NodeContext
    b = ctx.b
    relevance = b.op("Mul", [ctx.y(), ctx.g()], hint="relevance")
    node_ctx = NodeContext(node=ctx.node, graph=ctx.graph, b=b, rule=rule, relevance_out=[relevance],
                           live=list(ctx.carries))
    sent = handler_for(ctx.op)(node_ctx)
    return [b.op("Div", [r, b.stabilize(x, 1e-10)], hint="gradient") if r is not None and flows else None
            for r, x, flows in zip(sent, ctx.node.input, ctx.carries)]


def _swap_last(ctx: GradContext, tensor: str, rank: int) -> str:
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    return ctx.b.op("Transpose", [tensor], perm=perm)


@register_vjp("MatMul")
def matmul(ctx: GradContext):
    """Y = A B: g_A = g B^T, g_B = A^T g (summed over broadcast batch axes)."""
    a, bm = ctx.x(0), ctx.x(1)
    ra, rb = ctx.rank(a), ctx.rank(bm)
    rule = ctx.analysis.rules.get(ctx.name)
    if not isinstance(rule, R.UniformShare) and not _is_plain_gradient(rule):   # a dense layer's rule
        raise UnsupportedOpError("MatMul", ctx.name, f"{rule!r} needs the layer as a Gemm with a 2-D constant weight")
    if ra is None or rb is None or ra < 2 or rb < 2:
        raise UnsupportedOpError("MatMul", ctx.name, "only products of matrices (rank >= 2) are supported")
    b, g = ctx.b, ctx.g()
    result = ctx.none()
    if ctx.carries_gradient(0):
        weight = ctx.const(1)
        bt = b.const(np.swapaxes(weight, -1, -2), hint="weight_t") if weight is not None else _swap_last(ctx, bm, rb)
        result[0] = ctx.unbroadcast(b.op("MatMul", [g, bt]), 0)
    if ctx.carries_gradient(1):
        weight = ctx.const(0)
        at = b.const(np.swapaxes(weight, -1, -2), hint="input_t") if weight is not None else _swap_last(ctx, a, ra)
        result[1] = ctx.unbroadcast(b.op("MatMul", [at, g]), 1)
    return share(ctx, result)


@register_vjp("Gemm")
def gemm(ctx: GradContext):
    """Y = alpha A' B' + beta C (A' = A or A^T, B' likewise)."""
    rule = ctx.analysis.rules.get(ctx.name)
    if not _is_plain_gradient(rule):
        return by_rule(ctx, rule)
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    trans_a, trans_b = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))
    b, g = ctx.b, ctx.g()
    result = ctx.none()
    if ctx.carries_gradient(0):
        weight = ctx.const(1)
        if weight is None:
            raise UnsupportedOpError("Gemm", ctx.name, "both operands are computed; export the product as MatMul")
        if trans_b and alpha == 1.0:   # g_A' = g B: the forward weight itself, not a copy
            ga = b.op("MatMul", [g, ctx.x(1)])
        else:                          # g_A' = alpha g B'^T
            bt = (weight if trans_b else weight.T) * alpha
            ga = b.op("MatMul", [g, b.const(np.ascontiguousarray(bt), hint="weight_t")])
        result[0] = b.op("Transpose", [ga]) if trans_a else ga
    if ctx.carries_gradient(1):
        raise UnsupportedOpError("Gemm", ctx.name, "its weight operand is computed; only x @ W with a constant W "
                                 "is supported")
    if len(ctx.node.input) > 2 and ctx.carries_gradient(2):
        gc = ctx.unbroadcast(g, 2)
        result[2] = b.op("Mul", [gc, b.scalar(beta)]) if beta != 1.0 else gc
    return result


@register_vjp("Conv")
def conv(ctx: GradContext):
    """g_x = ConvTranspose(g, W) with the Conv's geometry (the patch embedding of a ViT)."""
    weight = ctx.const(1)
    if weight is None or ctx.carries_gradient(1):
        raise UnsupportedOpError("Conv", ctx.name, "its kernel is computed; only constant kernels are supported")
    rule = ctx.analysis.rules.get(ctx.name)
    if not _is_plain_gradient(rule):
        return by_rule(ctx, rule)
    if ctx.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise UnsupportedOpError("Conv", ctx.name, "auto_pad SAME_* is not supported; export with explicit pads")
    x_shape, y_shape = ctx.shape(ctx.x()), ctx.shape(ctx.y())
    if x_shape is None or y_shape is None or None in x_shape[2:] or None in y_shape[2:]:
        raise UnsupportedOpError("Conv", ctx.name, "its spatial size is not static; export with a fixed image size")
    spatial = len(x_shape) - 2
    strides = list(ctx.attr("strides", [1] * spatial))
    dilations = list(ctx.attr("dilations", [1] * spatial))
    pads = list(ctx.attr("pads", [0] * 2 * spatial))
    kernel = weight.shape[2:]
    output_padding = []
    for k in range(spatial):
        natural = (y_shape[2 + k] - 1) * strides[k] - pads[k] - pads[spatial + k] + dilations[k] * (kernel[k] - 1) + 1
        output_padding.append(x_shape[2 + k] - natural)
    b = ctx.b
    gx = b.op("ConvTranspose", [ctx.g(), ctx.x(1)], strides=strides, dilations=dilations, pads=pads,
              group=int(ctx.attr("group", 1)), output_padding=output_padding)
    return ctx.only(0, gx)
