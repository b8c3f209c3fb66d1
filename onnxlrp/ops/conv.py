"""Conv (1D/2D/3D, strides, pads, dilations, groups incl. depthwise) and ConvTranspose.

The transpose of a Conv is a ConvTranspose with the same weight, strides, pads, dilations and group,
with output_padding (and, for windows that overhang, extra end padding) chosen so that it lands
exactly on the input's spatial size; with stride 1 it is emitted as a Conv over the flipped kernel
(channel axes swapped per group, pads d(k-1) - p), which runs faster. The transpose of a ConvTranspose
is the matching Conv.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOpError
from ..rules import IDENTITY, ONES
from .context import Context
from .evaluate import evaluate_node
from .registry import family, relevance, vjp
from .weighted import LinearMap, propagate

CONV = family("convolution", "Conv", kind="conv")
CONV_TRANSPOSE = family("transposed convolution", "ConvTranspose", kind="conv")


def transpose_geometry(in_size, out_size, kernel, strides, dilations, pads):
    """(pads, output_padding) for a ConvTranspose that maps out_size back onto in_size."""
    nd = len(kernel)
    begins, ends = list(pads[:nd]), list(pads[nd:])
    output_padding = []
    for i in range(nd):
        reach = strides[i] * (out_size[i] - 1) + dilations[i] * (kernel[i] - 1) + 1 - begins[i] - ends[i]
        extra = in_size[i] - reach
        if extra < 0:  # the last window overhangs (ceil_mode): trim it off the end instead
            ends[i] -= extra
            extra = 0
        output_padding.append(extra)
    return begins + ends, output_padding


class _ConvGeometry:
    def __init__(self, ctx: Context, kernel):
        nd = len(kernel)
        self.kernel = list(kernel)
        self.strides = list(ctx.attr("strides", [1] * nd))
        self.dilations = list(ctx.attr("dilations", [1] * nd))
        self.pads = list(ctx.attr("pads", [0] * (2 * nd)))
        self.group = int(ctx.attr("group", 1))
        x_shape, y_shape = ctx.shape(ctx.x()), ctx.shape(ctx.y())
        # a free spatial size is fine where the transpose needs no sizes: stride 1 (a YOLO head's anchors axis)
        free = x_shape is None or y_shape is None or None in (x_shape[1], y_shape[1]) or (
            any(d is None for d in list(x_shape[2:]) + list(y_shape[2:])) and any(s != 1 for s in self.strides))
        if free:
            raise UnsupportedOpError(ctx.node.op_type, ctx.name,
                                     f"its input/output shapes {x_shape} -> {y_shape} are not static apart from the "
                                     "batch; give the model a fixed input size")
        self.x_shape, self.y_shape = tuple(x_shape), tuple(y_shape)
        self.static = all(d is not None for d in list(x_shape[2:]) + list(y_shape[2:]))

    def attrs(self, pads=None):
        return dict(kernel_shape=self.kernel, strides=self.strides, dilations=self.dilations,
                    pads=self.pads if pads is None else pads, group=self.group)


class ConvMap(LinearMap):
    def __init__(self, ctx: Context):
        weight = ctx.const(1)
        if weight is None:
            raise UnsupportedOpError("Conv", ctx.name, "its weight is computed in the graph; only constant weights "
                                     "can be rule-transformed")
        super().__init__(ctx, weight, ctx.const(2))
        self.geometry = _ConvGeometry(ctx, weight.shape[2:])
        g = self.geometry
        if g.static:
            self.t_pads, self.output_padding = transpose_geometry(
                g.x_shape[2:], g.y_shape[2:], g.kernel, g.strides, g.dilations, g.pads)
        else:   # stride 1: the transpose lands on the input's size whatever it is
            self.t_pads, self.output_padding = list(g.pads), [0] * len(g.kernel)
        self._flipped: dict = {}

    def sample_shape(self):
        return self.geometry.x_shape[1:]

    def out_channels(self):
        return self.weight.shape[0]

    def forward(self, inp, weight, bias, offset=0.0):
        inputs = self.operands(inp, weight, bias, offset)
        return self.ctx.b.op("Conv", inputs, **self.geometry.attrs())

    def forward_constant(self, inp, weight, bias):
        args = [inp.astype(np.float32), weight(self.weight).astype(np.float32)]
        if bias is not None and self.bias is not None:
            args.append(bias(self.bias).astype(np.float32))
        return evaluate_node("Conv", args, **self.geometry.attrs())

    def transpose(self, s, weight):
        if weight == ONES and self.geometry.group == 1:
            return self._ones_transpose(s)
        return self._general_transpose(s, weight)

    def _general_transpose(self, s, weight):
        pads = self._flipped_pads()
        if pads is not None:
            # stride 1: the transpose is a Conv with the kernel flipped and its channel axes swapped,
            # which onnxruntime runs faster than ConvTranspose (its own im2col/GEMM and NCHWc paths)
            g = self.geometry
            return self.ctx.b.op("Conv", [s, self._flipped_weight_name(weight)], kernel_shape=g.kernel,
                                 strides=g.strides, dilations=g.dilations, pads=pads, group=g.group)
        attrs = self.geometry.attrs(pads=self.t_pads)
        return self.ctx.b.op("ConvTranspose", [s, self.weight_name(weight)], output_padding=self.output_padding,
                             **attrs)

    def _ones_transpose(self, s):
        """The transpose with all weights one (Flat): every input channel receives the same sum, so s is
        summed over the output channels first and one channel is transposed, then broadcast."""
        b, g = self.ctx.b, self.geometry
        summed = b.op("ReduceSum", [s, b.ints([1])], keepdims=1)
        ones = b.const(np.ones((1, 1) + tuple(g.kernel), np.float32), hint="W_ones_one_channel")  # flip-symmetric
        pads = self._flipped_pads()
        if pads is not None:
            one = b.op("Conv", [summed, ones], **g.attrs(pads=pads))
        else:
            one = b.op("ConvTranspose", [summed, ones], output_padding=self.output_padding, **g.attrs(pads=self.t_pads))
        return b.op("Expand", [one, b.ints([1, self.weight.shape[1]] + [1] * len(g.kernel))])

    def _flipped_pads(self):
        """Pads of the flipped-kernel Conv equal to this Conv's transpose, or None where there is none
        (strides > 1, or pads wider than the dilated kernel)."""
        g = self.geometry
        if any(s != 1 for s in g.strides) or any(self.output_padding):
            return None
        nd = len(g.kernel)
        reach = [d * (k - 1) for d, k in zip(g.dilations, g.kernel)]
        pads = [reach[i % nd] - p for i, p in enumerate(self.t_pads)]
        return pads if min(pads) >= 0 else None

    def _flipped_weight_name(self, transform):
        if transform not in self._flipped:
            w = transform(self.weight)
            groups, nd = self.geometry.group, w.ndim - 2
            c_out, c_in_g = w.shape[:2]
            w = w.reshape((groups, c_out // groups, c_in_g) + w.shape[2:]).swapaxes(1, 2)
            w = w.reshape((groups * c_in_g, c_out // groups) + w.shape[3:])
            w = np.flip(w, axis=tuple(range(2, 2 + nd)))
            self._flipped[transform] = self.ctx.b.const(w, hint=f"W_{transform.kind}_flipped")
        return self._flipped[transform]


class ConvTransposeMap(LinearMap):
    """A ConvTranspose inside the model: its forward is ConvTranspose, its transpose a Conv."""

    def __init__(self, ctx: Context):
        weight = ctx.const(1)
        if weight is None:
            raise UnsupportedOpError("ConvTranspose", ctx.name, "its weight is computed in the graph")
        super().__init__(ctx, weight, ctx.const(2))
        if ctx.attr("auto_pad", "NOTSET") not in ("NOTSET", "") or ctx.attr("output_shape") is not None:
            raise UnsupportedOpError("ConvTranspose", ctx.name, "auto_pad/output_shape are not supported; "
                                     "give explicit pads and output_padding")
        self.geometry = _ConvGeometry(ctx, weight.shape[2:])
        self.output_padding = list(ctx.attr("output_padding", [0] * len(self.geometry.kernel)))

    def sample_shape(self):
        return self.geometry.x_shape[1:]

    def out_channels(self):
        return self.weight.shape[1] * self.geometry.group

    def fan_in(self):
        return self.weight.shape[0] // self.geometry.group * int(np.prod(self.geometry.kernel))

    def forward(self, inp, weight, bias, offset=0.0):
        inputs = self.operands(inp, weight, bias, offset)
        return self.ctx.b.op("ConvTranspose", inputs, output_padding=self.output_padding, **self.geometry.attrs())

    def forward_constant(self, inp, weight, bias):
        args = [inp.astype(np.float32), weight(self.weight).astype(np.float32)]
        if bias is not None and self.bias is not None:
            args.append(bias(self.bias).astype(np.float32))
        return evaluate_node("ConvTranspose", args, output_padding=self.output_padding, **self.geometry.attrs())

    def transpose(self, s, weight):
        return self.ctx.b.op("Conv", [s, self.weight_name(weight)], **self.geometry.attrs())


@relevance(CONV)
def conv(ctx: Context):
    return ctx.only(0, propagate(ctx, ConvMap(ctx), ctx.rule))


@vjp(CONV)
def conv_vjp(ctx: Context, seeds):
    return ctx.only(0, ConvMap(ctx).transpose(seeds[0], IDENTITY))


@relevance(CONV_TRANSPOSE)
def conv_transpose(ctx: Context):
    return ctx.only(0, propagate(ctx, ConvTransposeMap(ctx), ctx.rule))


@vjp(CONV_TRANSPOSE)
def conv_transpose_vjp(ctx: Context, seeds):
    return ctx.only(0, ConvTransposeMap(ctx).transpose(seeds[0], IDENTITY))
