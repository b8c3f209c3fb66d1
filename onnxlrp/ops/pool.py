"""Pooling.

MaxPool / GlobalMaxPool: winner-take-all (the gradient): each output's relevance goes to the input
that won its window; an input that wins several overlapping windows receives the sum. The winners
come from MaxPool's own indices output, scattered back with ScatterElements (runs on CPU and CUDA;
MaxUnpool has no CUDA kernel).

AveragePool / GlobalAveragePool: linear maps (kind "pool", Norm by default): J^T is a depthwise
ConvTranspose of ones over the seed / divisor (the divisor map is computed once, at compile time).

LpPool / GlobalLpPool: deep Taylor's rule (docs/oneclass.md), in relevance form.
"""
from __future__ import annotations

import numpy as np
from onnx import helper

from ..errors import UnsupportedOpError
from .context import Context
from .conv import transpose_geometry
from .evaluate import evaluate_node
from .registry import family, relevance, vjp

MAX_POOL = family("max pooling (winner-take-all)", "MaxPool", routes=True)
GLOBAL_MAX_POOL = family("global max pooling (winner-take-all)", "GlobalMaxPool", routes=True)
AVERAGE_POOL = family("average pooling", "AveragePool", kind="pool")
GLOBAL_AVERAGE_POOL = family("global average pooling", "GlobalAveragePool", kind="pool")
LP_POOL = family("p-norm pooling (deep Taylor)", "LpPool", kind="pool")
GLOBAL_LP_POOL = family("global p-norm pooling (deep Taylor)", "GlobalLpPool", kind="pool")


@vjp(MAX_POOL)
def max_pool(ctx: Context, seeds):
    if int(ctx.attr("storage_order", 0)) != 0:
        raise UnsupportedOpError("MaxPool", ctx.name, "storage_order=1 (column-major indices) is not supported")
    b = ctx.b
    indices = ctx.ensure_output(1, "indices")  # flat over the whole batch
    x_shape = ctx.shape(ctx.x())
    if x_shape is None or None in x_shape[1:]:
        flat = b.ints([-1])
        zeros = b.op("Reshape", [b.zeros_like(ctx.x()), flat])
        scattered = b.op("ScatterElements", [zeros, b.op("Reshape", [indices, flat]),
                                             b.op("Reshape", [seeds[0], flat])], axis=0, reduction="add", hint="winners")
        return [b.reshape_like(scattered, ctx.x())]
    # per sample, so that every shape below stays known to onnxruntime (see Context.reshape_back);
    # x * 0 rather than ConstantOfShape(Shape(x)) for the same reason
    per_sample = b.ints([0, -1])
    zeros = b.op("Mul", [b.op("Reshape", [ctx.x(), per_sample]), b.scalar(0.0)])
    # sample n's indices start at n * sample_size (a Sub: onnxruntime's int64 Mod is slow)
    batch = b.op("Squeeze", [b.op("Shape", [ctx.x()], start=0, end=1)])
    first = b.op("Range", [b.const(np.asarray(0, np.int64)), batch, b.const(np.asarray(1, np.int64))])
    sample_size = b.const(np.asarray(int(np.prod(x_shape[1:])), np.int64), hint="sample_size")
    offsets = b.op("Unsqueeze", [b.op("Mul", [first, sample_size]), b.ints([1])])
    within_sample = b.op("Sub", [b.op("Reshape", [indices, per_sample]), offsets])
    scattered = b.op("ScatterElements", [zeros, within_sample, b.op("Reshape", [seeds[0], per_sample])],
                     axis=1, reduction="add", hint="winners")
    return [ctx.reshape_back(scattered)]


@vjp(GLOBAL_MAX_POOL)
def global_max_pool(ctx: Context, seeds):
    b = ctx.b
    per_channel = b.op("Reshape", [ctx.x(), b.ints([0, 0, -1])])
    winner = b.op("ArgMax", [per_channel], axis=2, keepdims=1)
    relevance = b.op("Reshape", [seeds[0], b.ints([0, 0, 1])])
    scattered = b.op("ScatterElements", [b.zeros_like(per_channel), winner, relevance], axis=2, hint="winners")
    return [b.reshape_like(scattered, ctx.x())]


@vjp(AVERAGE_POOL)
def average_pool(ctx: Context, seeds):
    x_shape, y_shape = ctx.static_shape(ctx.x()), ctx.static_shape(ctx.y())
    kernel, strides, dilations, pads = _window_geometry(ctx)
    channels = x_shape[1]
    divisor_weight = _inverse_divisors(ctx, x_shape, y_shape, kernel, strides, dilations, pads)
    t_pads, output_padding = transpose_geometry(x_shape[2:], y_shape[2:], kernel, strides, dilations, pads)
    b = ctx.b
    s = b.op("Mul", [seeds[0], b.const(divisor_weight, hint="inv_divisor")])
    ones = b.const(np.ones([channels, 1] + kernel, dtype=np.float32), hint="ones_kernel")
    return [b.op("ConvTranspose", [s, ones], kernel_shape=kernel, strides=strides, dilations=dilations, pads=t_pads,
                 group=channels, output_padding=output_padding)]


def _window_geometry(ctx: Context):
    """kernel, strides, dilations, pads of a pooling node."""
    kernel = list(ctx.attr("kernel_shape"))
    nd = len(kernel)
    return (kernel, list(ctx.attr("strides", [1] * nd)), list(ctx.attr("dilations", [1] * nd)),
            list(ctx.attr("pads", [0] * (2 * nd))))


def _inverse_divisors(ctx, x_shape, y_shape, kernel, strides, dilations, pads):
    """1 / divisor for every output position, as onnxruntime's AveragePool computes it."""
    nd = len(kernel)
    ones = np.ones((1, 1) + tuple(x_shape[2:]), dtype=np.float32)
    pool_attrs = {a.name: helper.get_attribute_value(a) for a in ctx.node.attribute}
    averaged_ones = evaluate_node("AveragePool", [ones], **pool_attrs)
    # in-bounds taps per window: a Conv of ones with ones (padding counts as zero); widen the end
    # padding so that ceil_mode windows exist here too
    conv_pads = list(pads)
    for i in range(nd):
        span = dilations[i] * (kernel[i] - 1) + 1
        needed = (y_shape[2 + i] - 1) * strides[i] + span - (x_shape[2 + i] + pads[i] + pads[nd + i])
        conv_pads[nd + i] += max(0, needed)
    in_bounds = evaluate_node("Conv", [ones, np.ones((1, 1) + tuple(kernel), dtype=np.float32)],
                              kernel_shape=kernel, strides=strides, dilations=dilations, pads=conv_pads)
    in_bounds = in_bounds[(Ellipsis,) + tuple(slice(0, d) for d in y_shape[2:])]
    return np.where(in_bounds > 0, averaged_ones / np.maximum(in_bounds, 1), 0.0)


@vjp(GLOBAL_AVERAGE_POOL)
def global_average_pool(ctx: Context, seeds):
    """Each input gets its window's seed / window size (broadcast back over the spatial axes)."""
    x_shape = ctx.shape(ctx.x())
    if x_shape is not None and all(d is not None for d in x_shape[2:]):
        count = ctx.b.scalar(float(np.prod(x_shape[2:])))
    else:
        count = ctx.b.op("Cast", [ctx.b.op("ReduceProd", [ctx.b.op("Shape", [ctx.x()], start=2)], keepdims=1)],
                         to=1)
    return [ctx.b.op("Expand", [ctx.b.op("Div", [seeds[0], count]), ctx.expand_target(ctx.x())])]


@relevance(LP_POOL)
def lp_pool(ctx: Context):
    """deep Taylor: sum pooling of |x| with the ratio of norms held constant (weights 1)"""
    eps = ctx.rule.stabilizer
    if ctx.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise UnsupportedOpError("LpPool", ctx.name, "auto_pad SAME_* is not supported; export with explicit pads")
    x_shape, y_shape = ctx.static_shape(ctx.x()), ctx.static_shape(ctx.y())
    kernel, strides, dilations, pads = _window_geometry(ctx)
    nd = len(kernel)
    channels = x_shape[1]
    b = ctx.b
    magnitude = b.op("Abs", [ctx.x()])
    ones = b.const(np.ones([channels, 1] + kernel, dtype=np.float32), hint="ones_kernel")
    sums = b.op("Conv", [magnitude, ones], kernel_shape=kernel, strides=strides, dilations=dilations, pads=pads,
                group=channels)
    # the window sums have the pool's own output shape (a ceil-mode pool has no more windows here)
    sums = b.op("Slice", [sums, b.ints([0] * nd), b.ints(list(y_shape[2:])), b.ints(list(range(2, 2 + nd)))])
    s = b.divide(ctx.R(), sums, eps)
    t_pads, output_padding = transpose_geometry(x_shape[2:], y_shape[2:], kernel, strides, dilations, pads)
    back = b.op("ConvTranspose", [s, ones], kernel_shape=kernel, strides=strides, dilations=dilations, pads=t_pads,
                group=channels, output_padding=output_padding)
    return [b.op("Mul", [magnitude, back])]


@relevance(GLOBAL_LP_POOL)
def global_lp_pool(ctx: Context):
    """deep Taylor: sum pooling of |x| with the ratio of norms held constant (weights 1)"""
    eps = ctx.rule.stabilizer
    rank = len(ctx.static_shape(ctx.x()))
    b = ctx.b
    magnitude = b.op("Abs", [ctx.x()])
    sums = b.op("ReduceSum", [magnitude, b.ints(list(range(2, rank)))], keepdims=1)
    return [b.op("Mul", [magnitude, b.divide(ctx.R(), sums, eps)])]
