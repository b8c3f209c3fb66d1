"""Element-wise arithmetic: sums, products and affine steps (docs/rules.md).

Add, Sub, Sum  of several computed tensors: a join (residual connection), Norm by default; with one
               computed operand: an affine step (a bias, a shift, a position embedding, a mask), Epsilon: the
               constant absorbs its share.
Mul, Div       by a constant (or a tensor held constant): an affine step, a scaling; relevance passes
               unchanged (x w R / (w x) = R). With two computed operands:
                 - x * h(x) with h element-wise (SiLU, GELU chains, Mish): one non-linearity, the identity rule
                   on the whole block (kind "nonlinear", found here, its input recorded by the analysis);
                 - a gate computed from the signal (squeeze-excitation), or the operand that went through a
                   non-linearity (SwiGLU's activation branch): kind "gate", held constant by default;
                 - a divisor computed from the numerator (x / ||x||, LayerNorm's sigma): kind "norm", the
                   divisor held constant;
                 - anything else: a bilinear product (kind "bilinear", AttnLRP's uniform rule).
Neg            a scaling by -1.
BatchNormalization that could not be folded into a layer: the affine step y = w x + b per channel.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOpError
from ..rules import Constant
from .context import Context
from .registry import family, relevance, vjp


def _sum_kind(node, analysis) -> str:
    return "join" if sum(analysis.carries(name) for name in node.input) >= 2 else "affine"


SUMS = family("sums", "Add", "Sum", "Sub", kind=_sum_kind)


@vjp(SUMS)
def sums(ctx: Context, seeds):
    result = [ctx.unbroadcast(seeds[0], i) if ctx.carries_relevance(i) else None for i in range(len(ctx.node.input))]
    if ctx.op == "Sub" and result[1] is not None:
        result[1] = ctx.b.op("Neg", [result[1]])
    return result


def gate_operand(node, analysis) -> int | None:
    """Of a product of two computed tensors: the operand that gates the other, or None."""
    a, b = node.input
    if analysis.computed_from(b, a):
        return 1
    if analysis.computed_from(a, b):
        return 0
    through = [analysis.through_nonlinearity(name) for name in node.input]
    return through.index(True) if through.count(True) == 1 else None


def _product_kind(node, analysis) -> str:
    carrying = [analysis.carries(name) for name in node.input]
    if node.op_type == "Div" and not carrying[0]:
        raise UnsupportedOpError("Div", node.name, "it divides by the signal (1 / x is not linear in x)")
    if not all(carrying) or len(node.input) != 2:
        held = [name for name, carries in zip(node.input, carrying) if not carries]
        return "norm" if any(analysis.is_normaliser(name) for name in held) else "affine"
    if node.op_type == "Div":
        if not analysis.computed_from(node.input[1], node.input[0]):
            raise UnsupportedOpError("Div", node.name, "it divides two computed tensors, and the divisor is not a "
                                     "normaliser computed from the numerator (as in x / ||x||)")
        return "norm"
    if analysis.block_input(node) is not None:
        return "nonlinear"
    return "gate" if gate_operand(node, analysis) is not None else "bilinear"


def _product_holds(node, analysis, rule) -> list[str]:
    """A normalising divisor is always held constant; a gate when its rule is Constant."""
    if node.op_type == "Div" and all(analysis.carries(name) for name in node.input):
        return [node.input[1]]
    if isinstance(rule, Constant) and len(node.input) == 2 and all(analysis.carries(name) for name in node.input):
        gate = gate_operand(node, analysis)
        if gate is not None:
            return [node.input[gate]]
    return []


PRODUCTS = family("products", "Mul", "Div", kind=_product_kind)
PRODUCTS.holds = _product_holds
NEG = family("negation", "Neg", kind="affine")
BATCH_NORM = family("batch normalisation (unfolded)", "BatchNormalization", kind="affine")


@vjp(PRODUCTS)
def products(ctx: Context, seeds):
    """g_a = g * b, g_b = g * a; for Div, g_a = g / b (a computed divisor is held constant)."""
    a, other = ctx.x(0), ctx.x(1)
    b, g = ctx.b, seeds[0]
    result = ctx.none()
    if ctx.op == "Div":
        if ctx.carries_relevance(1):
            raise UnsupportedOpError("Div", ctx.name, "it divides by a computed tensor that is neither held constant "
                                     "(a normaliser computed from the numerator) nor constant")
        result[0] = ctx.unbroadcast(b.op("Div", [g, other]), 0)
        return result
    if ctx.carries_relevance(0):
        result[0] = ctx.unbroadcast(b.op("Mul", [g, other]), 0)
    if ctx.carries_relevance(1):
        result[1] = ctx.unbroadcast(b.op("Mul", [g, a]), 1)
    return result


@relevance(PRODUCTS)
def scaling(ctx: Context):
    """A product with one operand that carries relevance is a scaling of it (by a constant, or by a factor held
    constant): relevance passes unchanged, x w R / (w x) = R, summed back where it was broadcast. Products of
    two carrying operands take their rule's general form (None)."""
    if sum(ctx.carries) != 1:
        return None
    i = ctx.carries.index(True)
    return ctx.only(i, ctx.unbroadcast(ctx.R(), i))


@vjp(NEG)
def negate(ctx: Context, seeds):
    return ctx.only(0, ctx.b.op("Neg", [seeds[0]]))


@relevance(NEG)
def negate_relevance(ctx: Context):
    return ctx.only(0, ctx.R())


def _batch_norm_scale(ctx: Context) -> np.ndarray:
    scale, _, _, variance = (ctx.const(i) for i in range(1, 5))
    if any(v is None for v in (scale, variance)):
        raise UnsupportedOpError("BatchNormalization", ctx.name, "its scale or variance is computed at run time")
    w = scale.astype(np.float64) / np.sqrt(variance.astype(np.float64) + float(ctx.attr("epsilon", 1e-5)))
    return w.reshape([-1] + [1] * (ctx.rank(ctx.x()) - 2))


@vjp(BATCH_NORM)
def batch_norm(ctx: Context, seeds):
    """y = w x + b per channel (w = scale / sqrt(var + eps)): g_x = w g."""
    if int(ctx.attr("training_mode", 0)):
        raise UnsupportedOpError("BatchNormalization", ctx.name, "training_mode=1 normalises over the batch")
    return ctx.only(0, ctx.b.op("Mul", [seeds[0], ctx.b.const(_batch_norm_scale(ctx), hint="bn_scale")]))
