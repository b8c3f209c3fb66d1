"""Ops that move, copy or select elements: their VJP routes the gradient back exactly where each element
came from (docs/rules.md). Shapes may be dynamic (sequence length): every shape is read at run time."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from ..errors import UnsupportedOpError
from .context import GradContext
from .registry import register_vjp


@register_vjp("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(ctx: GradContext):
    return ctx.only(0, ctx.b.op("Reshape", [ctx.g(), ctx.b.op("Shape", [ctx.x()])]))


@register_vjp("Transpose")
def transpose(ctx: GradContext):
    perm = ctx.attr("perm")
    if perm is None:
        perm = list(reversed(range(ctx.rank(ctx.x()))))
    return ctx.only(0, ctx.b.op("Transpose", [ctx.g()], perm=[int(i) for i in np.argsort(perm)]))


@register_vjp("Identity", "Dropout", "Cast")
def identity(ctx: GradContext):
    return ctx.only(0, ctx.g())


@register_vjp("Expand")
def expand(ctx: GradContext):
    return ctx.only(0, ctx.unbroadcast(ctx.g(), 0))


@register_vjp("Where")
def where(ctx: GradContext):
    """Each branch gets the gradient where it was chosen (a constant branch gets nothing)."""
    b, condition = ctx.b, ctx.x(0)
    result = ctx.none()
    zero = b.scalar(0.0)
    if ctx.carries_gradient(1):
        result[1] = ctx.unbroadcast(b.op("Where", [condition, ctx.g(), zero]), 1)
    if ctx.carries_gradient(2):
        result[2] = ctx.unbroadcast(b.op("Where", [condition, zero, ctx.g()]), 2)
    return result


def _axis(ctx: GradContext, default: int = 0) -> int:
    return int(ctx.attr("axis", default)) % ctx.rank(ctx.y())


def _dim(ctx: GradContext, tensor: str, axis: int) -> str:
    """The size of `tensor` along `axis`, as a 1-element int64 tensor."""
    return ctx.b.op("Shape", [tensor], start=axis, end=axis + 1)


@register_vjp("Concat")
def concat(ctx: GradContext):
    axis = _axis(ctx)
    b = ctx.b
    sizes = b.op("Concat", [_dim(ctx, x, axis) for x in ctx.node.input], axis=0)
    parts = b.op("Split", [ctx.g(), sizes], n_out=len(ctx.node.input), axis=axis)
    return [part if ctx.carries_gradient(i) else None for i, part in enumerate(parts)]


@register_vjp("Split")
def split(ctx: GradContext):
    axis = _axis(ctx)
    b = ctx.b
    parts = [ctx.g(j) if ctx.g(j) else b.zeros_like(ctx.y(j)) for j in range(len(ctx.node.output))]
    return ctx.only(0, b.op("Concat", parts, axis=axis))


def _scatter_add(ctx: GradContext, gradient: str, positions: str, axis: int, full: str) -> str:
    """Add the slices of `gradient` along `axis` into a zero tensor shaped `full`, slice k at positions[k]
    (a 1-D int64 tensor)."""
    b = ctx.b
    rank = ctx.rank(ctx.x())
    index_shape = [1] * rank
    index_shape[axis] = -1
    index = b.op("Expand", [b.op("Reshape", [positions, b.ints(index_shape)]), b.op("Shape", [gradient])])
    zeros = b.op("ConstantOfShape", [full], value=helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0]))
    return b.op("ScatterElements", [zeros, index, gradient], axis=axis, reduction="add")


@register_vjp("Gather")
def gather(ctx: GradContext):
    """The gradient of each gathered slice is added back at its index (indices constant or computed)."""
    if ctx.carries_gradient(1):
        raise UnsupportedOpError("Gather", ctx.name, "its indices carry gradient")
    x, b = ctx.x(), ctx.b
    rank = ctx.rank(x)
    axis = int(ctx.attr("axis", 0)) % rank
    if ctx.rank(ctx.x(1)) is None:
        raise UnsupportedOpError("Gather", ctx.name, "the rank of its indices is unknown")
    x_shape = b.op("Shape", [x])
    dim = _dim(ctx, x, axis)
    positions = b.op("Reshape", [ctx.x(1), b.ints([-1])])
    positions = b.op("Cast", [positions], to=TensorProto.INT64)
    # negative indices count from the end
    positions = b.op("Where", [b.op("Less", [positions, b.ints([0])]), b.op("Add", [positions, dim]), positions])
    # the gathered axes flattened into one: x's dims before and after the axis, -1 between
    flat_shape = b.op("Concat", [b.op("Shape", [x], start=0, end=axis), b.ints([-1]),
                                 b.op("Shape", [x], start=axis + 1)], axis=0)
    gradient = b.op("Reshape", [ctx.g(), flat_shape])
    return ctx.only(0, _scatter_add(ctx, gradient, positions, axis, x_shape))


@register_vjp("Slice")
def slice_(ctx: GradContext):
    """Each sliced axis in turn: the kept positions (a Slice of 0..dim-1) get the gradient back."""
    if len(ctx.node.input) < 3:
        raise UnsupportedOpError("Slice", ctx.name, "opset < 10 Slice; re-export with opset >= 10")
    starts, ends = ctx.const(1), ctx.const(2)
    axes = ctx.const(3) if len(ctx.node.input) > 3 and ctx.node.input[3] else None
    steps = ctx.const(4) if len(ctx.node.input) > 4 and ctx.node.input[4] else None
    if starts is None or ends is None or (len(ctx.node.input) > 3 and ctx.node.input[3] and axes is None) or \
            (len(ctx.node.input) > 4 and ctx.node.input[4] and steps is None):
        raise UnsupportedOpError("Slice", ctx.name, "its starts, ends, axes or steps are computed at run time")
    x, b = ctx.x(), ctx.b
    rank = ctx.rank(x)
    axes = np.arange(len(starts)) if axes is None else axes
    steps = np.ones(len(starts), np.int64) if steps is None else steps
    gradient = ctx.g()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = int(axis) % rank
        everything = b.op("Range", [b.op("Constant", [], value=helper.make_tensor("value", TensorProto.INT64, [], [0])),
                                    b.op("Squeeze", [_dim(ctx, x, axis)]),
                                    b.op("Constant", [], value=helper.make_tensor("value", TensorProto.INT64, [], [1]))])
        kept = b.op("Slice", [everything, b.ints([int(start)]), b.ints([int(end)]), b.ints([0]), b.ints([int(step)])])
        full = b.op("Concat", [b.op("Shape", [gradient], start=0, end=axis), _dim(ctx, x, axis)]
                    + ([b.op("Shape", [gradient], start=axis + 1)] if axis + 1 < rank else []), axis=0)
        gradient = _scatter_add(ctx, gradient, kept, axis, full)
    return ctx.only(0, gradient)
