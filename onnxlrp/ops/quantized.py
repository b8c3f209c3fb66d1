"""Quantized models: weight-only quantized layers (onnxruntime's MatMulNBits, 4- and 8-bit blocked weights,
com.microsoft), the QuantizeLinear / DequantizeLinear pairs of QDQ models, and the layers that compute on
integer activations (dynamic int8, QOperator), which canonicalisation puts into float-ended spans
(onnxlrp/canonical/quantized.py).

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

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..canonical.quantized import SPAN_DOMAIN
from ..errors import UnsupportedOpError
from . import arithmetic, conv, dense
from .context import Context
from .registry import family, relevance, vjp

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


QUANTIZATION_EPSILON = 1e-10   # the identity rule's stabiliser, as LXT's (compiler/walk.py)


@vjp(FAKE_QUANTIZATION)
def quantization_step(ctx: Context, seeds):
    """QuantizeLinear rounds x to its grid and clips it to the grid's range; DequantizeLinear gives the value back
    as a float, x_hat. Together an element-wise step, given the identity rule like any activation: R_x = R_x_hat,
    in gradient form g_x = g * x_hat / x. So relevance is conserved through the rounding, is 0 where a ReLU
    folded into the zero point clips x to 0 (quantize_static does that), and passes where a value saturates at
    the grid's top (the straight-through estimator would drop it: a saturated explained logit would lose all
    its relevance)."""
    if ctx.op == "DequantizeLinear" or ctx.form == "R":
        return ctx.only(0, seeds[0])
    b = ctx.b
    rounded = b.op("DequantizeLinear", [ctx.y(), *ctx.node.input[1:3]], hint="rounded",
                   **({"axis": ctx.attr("axis")} if ctx.attr("axis") is not None else {}))
    ratio = b.op("Div", [rounded, b.stabilize(ctx.x(), QUANTIZATION_EPSILON)], hint="identity_rule")
    return ctx.only(0, b.op("Mul", [seeds[0], ratio]))


# ---- spans: one layer on integer activations, with float ends ----

SPAN_ANCHORS = ("MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv", "QLinearAdd")


class Span:
    """What a span computes, read from its function: the float layer it stands for, y = W x + b (dense or conv)
    or y = a + b (QLinearAdd), with W and b its dequantized integer weight and bias; x is the span's float
    input, whose rounding to the integer grid the rules pass straight through (as for QDQ pairs). A QOperator
    span's output lies on a grid, and is saturated at its ends: nothing passes back there."""

    def __init__(self, node, graph):
        function = next((f for f in graph.model.functions if f.domain == SPAN_DOMAIN and f.name == node.op_type),
                        None)
        if function is None:
            raise UnsupportedOpError(node.op_type, node.name, "a call of onnxlrp's quantized span whose function is "
                                     "missing from the model")
        actual = dict(zip(function.input, node.input))
        self.node, self.graph = node, graph
        self.anchor = next(n for n in function.node if n.op_type in SPAN_ANCHORS)
        self.op = self.anchor.op_type
        self._actual = lambda name: actual.get(name, name)
        body = {out: n for n in function.node for out in n.output}
        self._body, self._formals = body, list(function.input)
        self.bias = None
        self.output_grid = None
        if self.op in ("MatMulInteger", "ConvInteger"):
            quantize = body[self.anchor.input[0]]
            scale = next(n for n in function.node if n.op_type == "Mul" and quantize.output[1] in n.input)
            self.weight_q = self.anchor.input[1]
            self.weight_zero = self.anchor.input[3] if len(self.anchor.input) > 3 and self.anchor.input[3] else None
            self.weight_scale = next(i for i in scale.input if i != quantize.output[1])
            add = next((n for n in function.node if n.op_type == "Add"), None)
            if add is not None:
                self.bias = self._const(next(i for i in add.input if self._const(i) is not None)).reshape(-1)
        elif self.op in ("QLinearMatMul", "QLinearConv"):
            self.weight_q, self.weight_scale, self.weight_zero = self.anchor.input[3:6]
            self.output_grid = self.anchor.input[6:8]
            if self.op == "QLinearConv" and len(self.anchor.input) > 8 and self.anchor.input[8]:
                input_scale = self._const(self.anchor.input[1]).astype(np.float64)
                self.bias = self._const(self.anchor.input[8]) * input_scale * self._scale_per(0, 1)
        else:
            self.output_grid = self.anchor.input[6:8]
        self.kind = {"MatMulInteger": "dense", "QLinearMatMul": "dense", "ConvInteger": "conv",
                     "QLinearConv": "conv"}.get(self.op, "sum")

    def _const(self, formal: str):
        return self.graph.const(self._actual(formal))

    def _scale_per(self, axis: int, rank: int) -> np.ndarray:
        """The weight's scale, shaped to broadcast along `axis` of a rank-`rank` weight."""
        scale = np.asarray(self._const(self.weight_scale), dtype=np.float64).reshape(-1)
        shape = [1] * rank
        shape[axis] = -1
        return scale.reshape(shape) if scale.size > 1 else scale.reshape([1] * rank)

    def weight(self) -> np.ndarray:
        """W dequantized: [N, K] for a dense layer (transposed from MatMul's [K, N]), [O, I, k...] for a conv."""
        q = np.asarray(self._const(self.weight_q), dtype=np.float64)
        axis = 1 if self.kind == "dense" else 0
        zero = 0.0
        if self.weight_zero:
            zero = np.asarray(self._const(self.weight_zero), dtype=np.float64).reshape(-1)
            shape = [1] * q.ndim
            shape[axis] = -1
            zero = zero.reshape(shape) if zero.size > 1 else zero.reshape([1] * q.ndim)
        weight = (q - zero) * self._scale_per(axis, q.ndim)
        return weight.T if self.kind == "dense" else weight

    def emit_weight(self, b, name: str) -> None:
        """W in the relevance graph as `name`, dequantized from the forward's own integer weight (no float copy)."""
        scale = self._actual(self.weight_scale)
        inputs = [self._actual(self.weight_q), scale] + ([self._actual(self.weight_zero)] if self.weight_zero else [])
        if self.kind == "conv":
            b.op("DequantizeLinear", inputs, output=name, axis=0)
        else:
            b.op("Transpose", [b.op("DequantizeLinear", inputs, axis=1)], output=name, perm=[1, 0])

    def view(self, ctx: Context) -> tuple[Context, list[int | None]]:
        """The float layer as a node of its own family, and for each of its inputs the span input it is. Where
        the span rounds its output to a grid (QOperator), the view's output is the float layer's own z,
        computed again here: the rounding and clipping is an element-wise step between z and y (below)."""
        x, y = ctx.x(0), ctx.y(0)
        prefix = f"{SPAN_DOMAIN}/{ctx.name}"
        if self.kind == "sum":
            b_name, b_index = self._addend(ctx, prefix)
            node = helper.make_node("Add", [x, b_name], [y], name=ctx.name)
            view = dataclasses.replace(ctx, node=node, carries=[ctx.carries[0], b_index is not None
                                                                and ctx.carries[b_index]])
            index = [0, b_index]
        else:
            weight_name = f"{prefix}/weight"
            ctx.graph.constants[weight_name] = self.weight()
            inputs = [x, weight_name]
            if self.bias is not None:
                ctx.graph.constants[f"{prefix}/bias"] = np.asarray(self.bias, dtype=np.float64)
                inputs.append(f"{prefix}/bias")
            self.emit_weight(ctx.b, weight_name)
            if self.kind == "dense":
                node = helper.make_node("Gemm", inputs, [y], name=ctx.name, transB=1)
            else:
                attrs = {a.name: helper.get_attribute_value(a) for a in self.anchor.attribute}
                if attrs.pop("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                    raise UnsupportedOpError(self.node.op_type, self.node.name, "its convolution pads automatically "
                                             "(auto_pad); quantize the model exported with explicit pads")
                node = helper.make_node("Conv", inputs, [y], name=ctx.name, **attrs)
            view = dataclasses.replace(ctx, node=node, carries=[ctx.carries[0], False, False][:len(inputs)])
            index = [0]
        if self.output_grid is not None:
            node.output[0] = self._recompute(ctx, node)
        return view, index

    def _recompute(self, ctx: Context, node) -> str:
        """z, the float layer's output before rounding (a constant operand emitted for it)."""
        b = ctx.b
        inputs = [name if name in ctx.node.input or name not in ctx.graph.constants or name.endswith("/weight")
                  else b.const(ctx.graph.constants[name].astype(np.float32), hint=name.rsplit("/", 1)[-1])
                  for name in node.input]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        z = b.op(node.op_type, inputs, hint="before_rounding", **attrs)
        info = onnx.ValueInfoProto()
        info.CopyFrom(ctx.graph.value_infos[ctx.y()])
        info.name = z
        ctx.graph.value_infos[z] = info
        return z

    def _addend(self, ctx: Context, prefix: str) -> tuple[str, int | None]:
        """QLinearAdd's second operand: a span input (computed), or its dequantized constant."""
        quantize = self._body.get(self.anchor.input[3])
        if quantize is not None:
            index = self._formals.index(quantize.input[0])
            return ctx.x(index), index
        values = np.asarray(self._const(self.anchor.input[3]), dtype=np.float64)
        scale, zero = (np.asarray(self._const(n), dtype=np.float64) for n in self.anchor.input[4:6])
        name = f"{prefix}/addend"
        ctx.graph.constants[name] = (values - zero) * scale   # read for its shape; the sum's J^T needs no values
        return name, None


def _span_kind(node, analysis) -> str:
    span = Span(node, analysis.fwd)
    return FLOAT_FAMILY[span.kind].kind_of(node, analysis)   # a sum: a join or an affine step, as Add


QUANTIZED_SPAN = family("layer on integer activations (a span)", "*", kind=_span_kind, domain=SPAN_DOMAIN)
FLOAT_FAMILY = {"dense": dense.GEMM, "conv": conv.CONV, "sum": arithmetic.SUMS}


def _to_span(ctx: Context, sent: list, index: list[int | None]) -> list:
    result = ctx.none()
    for value, i in zip(sent, index):
        if value is not None and i is not None:   # x + x: both shares reach the one input
            result[i] = value if result[i] is None else ctx.b.op("Add", [result[i], value])
    return result


@vjp(QUANTIZED_SPAN)
def span_vjp(ctx: Context, seeds):
    """J^T of the float layer; a QOperator span's output y is its z rounded and clipped, an element-wise step
    given the identity rule (as QuantizeLinear above): g_z = g_y * y / z."""
    span = Span(ctx.node, ctx.graph)
    view, index = span.view(ctx)
    if span.output_grid is not None:
        b = ctx.b
        ratio = b.op("Div", [ctx.y(), b.stabilize(view.y(), QUANTIZATION_EPSILON)], hint="identity_rule")
        seeds = [b.op("Mul", [seeds[0], ratio])]
    return _to_span(ctx, FLOAT_FAMILY[span.kind].vjp(view, seeds), index)


@relevance(QUANTIZED_SPAN)
def span_relevance(ctx: Context):
    """The weighted rules (ZPlus, Gamma, Flat, ...) of the float layer, with R_z = R_y; None (the generic form,
    through the VJP) for a sum."""
    span = Span(ctx.node, ctx.graph)
    if span.kind == "sum":
        return None
    view, index = span.view(ctx)
    return _to_span(ctx, FLOAT_FAMILY[span.kind].relevance(view), index)


__all__ = ["MATMUL_NBITS", "FAKE_QUANTIZATION", "QUANTIZED_SPAN", "NBitsWeight", "Span", "unpack"]
