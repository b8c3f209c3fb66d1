"""Quantized models: weight-only quantized layers (onnxruntime's MatMulNBits, 4- and 8-bit blocked weights,
com.microsoft) and the QuantizeLinear / DequantizeLinear pairs of QDQ models.

The forward stays the model's own op, so the explainer computes exactly the logits onnxruntime computes. Its
J^T multiplies by the weight dequantized inside the relevance graph from the same 4- or 8-bit values, so the
explainer of a quantized model keeps its weights quantized (no float copy of every weight):

    MatMulNBits:   Y = A W^T (+ bias),  W[n, k] = (q[n, k] - zero_point[n, k // block]) * scale[n, k // block]
    J^T:           g_A = g_Y W

B is packed [N, blocks, block_size * bits / 8], low bits first; zero points default to 2^(bits - 1) and are
packed like B when they are integers (onnxruntime's contrib op documentation, MatMulNBits). From ONNX opset 21
the dequantization is one DequantizeLinear of a blocked uint4 / uint8 tensor; below it, the same arithmetic
from uint8 values (Cast, Sub, Mul).

Only rules that use W as it is apply (Epsilon, LRP-0, Norm, AttnLRP's linear layers): a rule that transforms
weights (Gamma, ZPlus) would need a float copy of W, and is refused by the walk as for any layer without one.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from ..errors import UnsupportedOpError
from .context import Context
from .registry import family, vjp

MATMUL_NBITS = family("4/8-bit matrix product", "MatMulNBits", kind="dense", domain="com.microsoft")
FAKE_QUANTIZATION = family("quantize / dequantize", "QuantizeLinear", "DequantizeLinear", routes=True)


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first `count` values along the last axis of bytes that hold 8 / bits values each, low bits first."""
    packed = np.asarray(packed, dtype=np.uint8)
    if bits == 8:
        return packed[..., :count]
    if bits != 4:
        raise ValueError(f"{bits}-bit values")
    values = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
    return values[..., :count]


class NBitsWeight:
    """The quantized weight of one MatMulNBits node, as integer values, scales and zero points [N, blocks]."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.k, self.n = int(ctx.attr("K")), int(ctx.attr("N"))
        self.bits, self.block = int(ctx.attr("bits", 4)), int(ctx.attr("block_size"))
        if self.bits not in (4, 8):
            raise UnsupportedOpError(ctx.op, ctx.name, f"{self.bits}-bit weights (4 and 8 are supported)")
        packed, scales = ctx.const(1), ctx.const(2)
        if packed is None or scales is None:
            raise UnsupportedOpError(ctx.op, ctx.name, "its weight or scales are computed, not constants")
        if ctx.const(4) is not None and not np.array_equal(ctx.const(4), np.arange(self.k) // self.block):
            raise UnsupportedOpError(ctx.op, ctx.name, "a g_idx that reorders the blocks (act-order); quantize "
                                     "without act-order")
        self.blocks = -(-self.k // self.block)
        padded = self.blocks * self.block
        self.values = unpack(packed.reshape(self.n, -1), self.bits, padded).reshape(self.n, padded)
        self.scales = np.asarray(scales, dtype=np.float32).reshape(self.n, self.blocks)
        zero = ctx.const(3)
        if zero is None:
            self.zero = np.full((self.n, self.blocks), 2 ** (self.bits - 1), dtype=np.float32)
        elif zero.dtype == np.uint8:
            self.zero = unpack(zero.reshape(self.n, -1), self.bits, self.blocks).astype(np.float32)
        else:
            self.zero = np.asarray(zero, dtype=np.float32).reshape(self.n, self.blocks)

    def emit(self) -> str:
        """W [N, K] computed in the relevance graph from the quantized values."""
        integral = self.zero == np.round(self.zero)
        if self.ctx.opset >= 21 and integral.all():
            return self._dequantize_linear()
        return self._arithmetic()

    def _dequantize_linear(self) -> str:
        b = self.ctx.b
        kind = TensorProto.UINT4 if self.bits == 4 else TensorProto.UINT8
        values = self._tensor(kind, self.values[:, :self.k], "weight_q")
        zero = self._tensor(kind, self.zero.astype(np.uint8), "zero_point")
        scales = b.const(self.scales, hint="scale")
        return b.op("DequantizeLinear", [values, scales, zero], hint="weight", axis=1, block_size=self.block)

    def _arithmetic(self) -> str:
        b = self.ctx.b
        values = b.const(self.values.reshape(self.n, self.blocks, self.block), hint="weight_q")
        zero = b.const(self.zero[..., None], hint="zero_point")
        scales = b.const(self.scales[..., None], hint="scale")
        as_float = b.op("Cast", [values], to=TensorProto.FLOAT)
        weight = b.op("Mul", [b.op("Sub", [as_float, zero]), scales])
        weight = b.op("Reshape", [weight, b.ints([self.n, self.blocks * self.block])])
        if self.blocks * self.block != self.k:
            weight = b.op("Slice", [weight, b.ints([0]), b.ints([self.k]), b.ints([1])])
        return weight

    def _tensor(self, kind: int, values: np.ndarray, hint: str) -> str:
        """A uint8 or uint4 initialiser (uint4: two values a byte, low bits first, as ONNX stores them)."""
        flat = np.ascontiguousarray(values, dtype=np.uint8).reshape(-1)
        if kind == TensorProto.UINT4:
            flat = np.append(flat, np.uint8(0)) if len(flat) % 2 else flat
            flat = flat[0::2] | (flat[1::2] << 4)
        name = self.ctx.b.fresh(hint)
        self.ctx.b.initializers.append(helper.make_tensor(name, kind, values.shape, flat.tobytes(), raw=True))
        return name


@vjp(MATMUL_NBITS)
def matmul_nbits(ctx: Context, seeds):
    """Y = A W^T + bias: g_A = g W."""
    return ctx.only(0, ctx.b.op("MatMul", [seeds[0], NBitsWeight(ctx).emit()]))


# the integers a QuantizeLinear may write: saturated values are where it clips x (a ReLU folded into a
# zero point at the type's minimum, as onnxruntime's quantize_static does)
INTEGER_RANGES = {TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8, TensorProto.INT16: np.int16,
                  TensorProto.UINT16: np.uint16}


@vjp(FAKE_QUANTIZATION)
def straight_through(ctx: Context, seeds):
    """DequantizeLinear(QuantizeLinear(x)) is x rounded to the quantization grid and clipped to its range:
    relevance and gradient pass through unchanged where x is inside the range and are 0 where QuantizeLinear
    saturates (the straight-through estimator), so a QDQ model is explained as its float model up to the
    rounding of its activations."""
    if ctx.op == "DequantizeLinear":
        return ctx.only(0, seeds[0])
    integer = INTEGER_RANGES.get(ctx.graph.elem_type(ctx.y()))
    if integer is None:
        raise UnsupportedOpError(ctx.op, ctx.name, "it quantizes to a type other than (u)int8 or (u)int16")
    b, quantized = ctx.b, ctx.y()
    low, high = np.iinfo(integer).min, np.iinfo(integer).max
    inside = b.op("And", [b.op("Greater", [quantized, b.const(np.array(low, integer), hint="qmin")]),
                          b.op("Less", [quantized, b.const(np.array(high, integer), hint="qmax")])])
    return ctx.only(0, b.op("Mul", [seeds[0], b.op("Cast", [inside], to=TensorProto.FLOAT)], hint="unsaturated"))


__all__ = ["MATMUL_NBITS", "FAKE_QUANTIZATION", "NBitsWeight", "unpack"]
