"""Dense layers. Canonicalisation brings Gemm and MatMul(+Add) to Gemm(x, W[N, K], b, transB=1)."""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOpError
from .context import NodeContext
from .registry import register
from .weighted import LinearMap, propagate


class DenseMap(LinearMap):
    def __init__(self, ctx: NodeContext):
        weight = ctx.const(1)
        if (weight is None or int(ctx.attr("transB", 0)) != 1 or int(ctx.attr("transA", 0)) != 0
                or float(ctx.attr("alpha", 1.0)) != 1.0 or float(ctx.attr("beta", 1.0)) != 1.0):
            raise UnsupportedOpError("Gemm", ctx.name, "it is not in canonical dense form (constant W, transB=1); "
                                     "this is a bug in canonicalisation, please report it with the model")
        super().__init__(ctx, weight, ctx.const(2))
        x_shape = ctx.shape(ctx.x())
        self.n_in = weight.shape[1]
        self.x_shape = x_shape

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


@register("Gemm", weighted="dense")
def gemm(ctx: NodeContext):
    return [propagate(ctx, DenseMap(ctx), ctx.rule)]


@register("MatMul")
def matmul(ctx: NodeContext):
    raise UnsupportedOpError("MatMul", ctx.name, "only MatMul by a constant 2-D weight (a dense layer) is supported; "
                             "this one multiplies two computed tensors or a batched weight")
