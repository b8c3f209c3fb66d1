"""Dense layers and matrix products.

Canonicalisation brings every dense layer, Gemm or MatMul with a constant 2-D weight (plus its bias Add), to
Gemm(x, W[N, K], b, transB=1): the weighted rules apply to it (onnxlrp/ops/weighted.py). A MatMul left over
multiplies by a constant of another shape (a dense layer the rules cannot transform: plain gradient, Epsilon
or Norm only), or multiplies two computed tensors (Q K^T, P V: a bilinear product, AttnLRP's uniform rule).
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOpError
from ..rules import IDENTITY
from .context import Context
from .registry import family, relevance, vjp
from .weighted import LinearMap, propagate


class DenseMap(LinearMap):
    def __init__(self, ctx: Context):
        weight = ctx.const(1)
        if (weight is None or int(ctx.attr("transB", 0)) != 1 or int(ctx.attr("transA", 0)) != 0
                or float(ctx.attr("alpha", 1.0)) != 1.0 or float(ctx.attr("beta", 1.0)) != 1.0):
            raise UnsupportedOpError("Gemm", ctx.name, "it is not in canonical dense form (constant W, transB=1); "
                                     "this is a bug in canonicalisation, please report it with the model")
        super().__init__(ctx, weight, ctx.const(2))
        self.n_in = weight.shape[1]

    def sample_shape(self):
        return (self.n_in,)

    def out_channels(self):
        return self.weight.shape[0]

    def forward(self, inp, weight, bias, offset=0.0):
        inputs = self.operands(inp, weight, bias, offset)
        return self.ctx.b.op("Gemm", inputs, transB=1)

    def forward_constant(self, inp, weight, bias):
        out = inp.astype(np.float64) @ weight(self.weight).T
        if bias is not None and self.bias is not None:
            out = out + bias(self.bias)
        return out

    def transpose(self, s, weight):
        return self.ctx.b.op("MatMul", [s, self.weight_name(weight)])


GEMM = family("dense layer", "Gemm", kind="dense")


@relevance(GEMM)
def gemm(ctx: Context):
    return ctx.only(0, propagate(ctx, DenseMap(ctx), ctx.rule))


@vjp(GEMM)
def gemm_vjp(ctx: Context, seeds):
    return ctx.only(0, DenseMap(ctx).transpose(seeds[0], IDENTITY))


def _matmul_kind(node, analysis) -> str:
    """A product with a constant is a dense layer; of two computed tensors, bilinear (even where one of them
    carries no relevance: P V with CP-LRP's probabilities held constant)."""
    return "dense" if any(analysis.fwd.const(name) is not None for name in node.input) else "bilinear"


MATMUL = family("matrix product", "MatMul", kind=_matmul_kind)


def _swap_last(ctx: Context, tensor: str, rank: int) -> str:
    return ctx.b.op("Transpose", [tensor], perm=list(range(rank - 2)) + [rank - 1, rank - 2])


@vjp(MATMUL)
def matmul(ctx: Context, seeds):
    """Y = A B: g_A = g B^T, g_B = A^T g (summed over broadcast batch axes)."""
    a, bm = ctx.x(0), ctx.x(1)
    ra, rb = ctx.rank(a), ctx.rank(bm)
    if ra is None or rb is None or ra < 2 or rb < 2:
        raise UnsupportedOpError("MatMul", ctx.name, "only products of matrices (rank >= 2) are supported")
    b, g = ctx.b, seeds[0]
    result = ctx.none()
    if ctx.carries_relevance(0):
        weight = ctx.const(1)
        bt = b.const(np.swapaxes(weight, -1, -2), hint="weight_t") if weight is not None else _swap_last(ctx, bm, rb)
        result[0] = ctx.unbroadcast(b.op("MatMul", [g, bt]), 0)
    if ctx.carries_relevance(1):
        weight = ctx.const(0)
        at = b.const(np.swapaxes(weight, -1, -2), hint="input_t") if weight is not None else _swap_last(ctx, a, ra)
        result[1] = ctx.unbroadcast(b.op("MatMul", [at, g]), 1)
    return result
