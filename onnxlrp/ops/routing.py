"""Ops that only move, copy or select elements: relevance goes back exactly where each element came from
(docs/rules.md), and so does the modified gradient (each output element is an input element, so R = t * g
routes alike). Relevance on padded or dropped elements is dropped.

Where the shapes are static apart from the batch, the geometry is read at compile time (constant reshape
targets, pads, splits: what onnxruntime's layout passes keep in their fast layouts); where a dim is free (a
sequence length), it is read at run time. The batch is never moved: onnxlrp explains each sample on its own.
Axis 0 of other tensors is routed like any axis (an attention's [3, batch, heads, ...] split, dynamo's
as_strided over a flattened tensor).
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from ..errors import UnsupportedOpError
from .context import Context
from .registry import family, vjp

RESHAPES = family("reshape", "Flatten", "Reshape", "Squeeze", "Unsqueeze", routes=True)
TRANSPOSE = family("transpose", "Transpose", routes=True)
COPIES = family("copy", "Identity", "Dropout", "Cast", routes=True)
EXPAND = family("expand", "Expand", routes=True)
WHERE = family("where", "Where", routes=True)
CONCAT = family("concat", "Concat", routes=True)
SPLIT = family("split", "Split", routes=True)
SLICE = family("slice", "Slice", routes=True)
PAD = family("pad", "Pad", routes=True)
GATHER = family("gather", "Gather", routes=True)
TILE = family("tile", "Tile", routes=True)


def _required_const(ctx: Context, i: int, what: str) -> np.ndarray:
    value = ctx.const(i)
    if value is None:
        raise UnsupportedOpError(ctx.op, ctx.name, f"its {what} (input {i}) is computed at run time; only constant "
                                 "geometry can be routed back")
    return value


def _int_scalar(ctx: Context, value: int) -> str:
    return ctx.b.op("Constant", [], value=helper.make_tensor("value", TensorProto.INT64, [], [value]))


def _dim(ctx: Context, tensor: str, axis: int) -> str:
    """The size of `tensor` along `axis`, as a 1-element int64 tensor read at run time."""
    return ctx.b.op("Shape", [tensor], start=axis, end=axis + 1)


@vjp(RESHAPES)
def reshape(ctx: Context, seeds):
    return ctx.only(0, ctx.reshape_back(seeds[0]))


@vjp(TRANSPOSE)
def transpose(ctx: Context, seeds):
    perm = ctx.attr("perm")
    if perm is None:
        perm = list(reversed(range(ctx.rank(ctx.x()))))
    return [ctx.b.op("Transpose", [seeds[0]], perm=[int(i) for i in np.argsort(perm)])]


@vjp(COPIES)
def copy(ctx: Context, seeds):
    return ctx.only(0, seeds[0])


@vjp(EXPAND)
def expand(ctx: Context, seeds):
    """Each copy's share summed back."""
    return ctx.only(0, ctx.unbroadcast(seeds[0], 0))


@vjp(WHERE)
def where(ctx: Context, seeds):
    """Each branch gets what arrives where it was chosen (a constant branch gets nothing)."""
    b, condition, zero = ctx.b, ctx.x(0), ctx.b.scalar(0.0)
    result = ctx.none()
    if ctx.carries_relevance(1):
        result[1] = ctx.unbroadcast(b.op("Where", [condition, seeds[0], zero]), 1)
    if ctx.carries_relevance(2):
        result[2] = ctx.unbroadcast(b.op("Where", [condition, zero, seeds[0]]), 2)
    return result


def _refuse_batch(ctx: Context, tensor: str, axis: int, what: str) -> None:
    if ctx.graph.is_batch(tensor, axis):
        raise UnsupportedOpError(ctx.op, ctx.name, f"{what} the batch axis; onnxlrp explains each sample on its own")


def _axis(ctx: Context, rank: int, tensor: str, what: str, default: int = 0) -> int:
    axis = int(ctx.attr("axis", default)) % rank
    _refuse_batch(ctx, tensor, axis, what)
    return axis


@vjp(CONCAT)
def concat(ctx: Context, seeds):
    """Split back into the parts."""
    rank = ctx.rank(ctx.y())
    axis = _axis(ctx, rank, ctx.y(), "it concatenates along")
    shapes = [ctx.shape(name) for name in ctx.node.input]
    b = ctx.b
    if all(shape is not None and shape[axis] is not None for shape in shapes):
        sizes = b.ints([shape[axis] for shape in shapes])
    else:
        sizes = b.op("Concat", [_dim(ctx, name, axis) for name in ctx.node.input], axis=0)
    parts = b.op("Split", [seeds[0], sizes], n_out=len(shapes), axis=axis)
    parts = parts if isinstance(parts, list) else [parts]
    return [part if ctx.carries_relevance(i) and _may_be_nonzero(ctx, axis, shapes, i) else None
            for i, part in enumerate(parts)]


def _may_be_nonzero(ctx: Context, axis: int, shapes: list, i: int) -> bool:
    """Where the walk knows along which range of this axis the seed can be non-zero (a detection's class
    scores), a part wholly outside it carries nothing: its branch (the boxes) needs no rule."""
    nonzero = ctx.extra.get("nonzero")
    if not nonzero or nonzero[0] != axis or any(shape[axis] is None for shape in shapes[:i + 1]):
        return True
    start = sum(shape[axis] for shape in shapes[:i])
    return start < nonzero[2] and start + shapes[i][axis] > nonzero[1]


@vjp(SPLIT)
def split(ctx: Context, seeds):
    """Concatenate back (zeros for the parts that carry nothing)."""
    axis = _axis(ctx, ctx.rank(ctx.x()), ctx.x(), "it splits")
    b = ctx.b
    parts = [seed if seed else b.zeros_like(ctx.y(j)) for j, seed in enumerate(seeds)]
    return ctx.only(0, b.op("Concat", parts, axis=axis))


def _crop_and_pad(ctx: Context, tensor: str, keep: dict[int, tuple[int, int]],
                  refill: dict[int, tuple[int, int]], rank: int) -> str:
    """Slice [start, stop) on some axes, then pad zeros (before, after) on some axes."""
    b = ctx.b
    if keep:
        axes = sorted(keep)
        tensor = b.op("Slice", [tensor, b.ints([keep[a][0] for a in axes]), b.ints([keep[a][1] for a in axes]),
                                b.ints(axes)])
    if any(sum(v) for v in refill.values()):
        pads = [refill.get(a, (0, 0))[0] for a in range(rank)] + [refill.get(a, (0, 0))[1] for a in range(rank)]
        tensor = b.op("Pad", [tensor, b.ints(pads)], mode="constant")
    return tensor


@vjp(PAD)
def pad(ctx: Context, seeds):
    """Cut the padding off again (its relevance is dropped); negative pads (crops) are refilled with zeros."""
    x_shape = ctx.static_shape(ctx.x())
    rank = len(x_shape)
    pads = [int(p) for p in (_required_const(ctx, 1, "pads") if len(ctx.node.input) > 1 else ctx.attr("pads"))]
    axes = list(range(rank))
    if len(ctx.node.input) > 3 and ctx.node.input[3]:
        axes = [int(a) % rank for a in _required_const(ctx, 3, "axes")]
    begin, end = dict(zip(axes, pads[:len(axes)])), dict(zip(axes, pads[len(axes):]))
    keep, refill = {}, {}
    for a in axes:
        if not (begin[a] or end[a]):
            continue
        _refuse_batch(ctx, ctx.x(), a, "it pads")
        if x_shape[a] is None:
            raise UnsupportedOpError("Pad", ctx.name, f"it pads axis {a}, whose size is not static")
        cut_before, cut_after = max(-begin[a], 0), max(-end[a], 0)
        start = max(begin[a], 0)
        keep[a] = (start, start + x_shape[a] - cut_before - cut_after)
        refill[a] = (cut_before, cut_after)
    return ctx.only(0, _crop_and_pad(ctx, seeds[0], keep, refill, rank))


def _slice_parameters(ctx: Context):
    """(starts, ends, axes, steps) as constants, for every opset."""
    if len(ctx.node.input) > 1:  # opset >= 10: inputs
        starts, ends = _required_const(ctx, 1, "starts"), _required_const(ctx, 2, "ends")
        axes = _required_const(ctx, 3, "axes") if len(ctx.node.input) > 3 and ctx.node.input[3] else \
            np.arange(len(starts))
        steps = _required_const(ctx, 4, "steps") if len(ctx.node.input) > 4 and ctx.node.input[4] else \
            np.ones(len(starts), np.int64)
    else:
        starts, ends = ctx.attr("starts"), ctx.attr("ends")
        axes, steps = ctx.attr("axes", list(range(len(starts)))), [1] * len(starts)
    return [(int(a), int(s), int(e), int(t)) for a, s, e, t in zip(axes, starts, ends, steps)]


def _scatter_along(ctx: Context, tensor: str, axis: int, positions: str, full: str) -> str:
    """Add the slices of `tensor` along `axis` into a zero tensor shaped `full` (a 1-D int64 shape), slice k
    at positions[k] (a 1-D int64 tensor)."""
    b = ctx.b
    index_shape = [1] * ctx.rank(ctx.x())
    index_shape[axis] = -1
    index = b.op("Expand", [b.op("Reshape", [positions, b.ints(index_shape)]), b.op("Shape", [tensor])])
    zeros = b.op("ConstantOfShape", [full], value=helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0]))
    return b.op("ScatterElements", [zeros, index, tensor], axis=axis, reduction="add")


@vjp(SLICE)
def slice_(ctx: Context, seeds):
    """Put back in place: contiguous slices by padding, strided ones by scattering."""
    x_shape = ctx.shape(ctx.x())
    rank = len(x_shape)
    tensor, b = seeds[0], ctx.b
    sliced = []
    for axis, start, end, step in _slice_parameters(ctx):
        axis %= rank
        if (start, step) == (0, 1) and end >= 2**31 - 1:   # the whole axis
            continue
        _refuse_batch(ctx, ctx.x(), axis, "it slices")
        sliced.append((axis, start, end, step))
    for axis, start, end, step in sliced:
        if x_shape[axis] is not None:
            kept = list(range(x_shape[axis])[slice(start, end, step)])
            if not kept:
                raise UnsupportedOpError("Slice", ctx.name, "the slice is empty")
            if step == 1:
                tensor = _crop_and_pad(ctx, tensor, {}, {axis: (kept[0], x_shape[axis] - 1 - kept[-1])}, rank)
                continue
            positions = b.const(np.asarray(kept, np.int64), hint="positions")
        else:   # a free dim: the kept positions are a Slice of 0..dim-1 at run time
            everything = b.op("Range", [_int_scalar(ctx, 0), b.op("Squeeze", [_dim(ctx, ctx.x(), axis)]),
                                        _int_scalar(ctx, 1)])
            positions = b.op("Slice", [everything, b.ints([start]), b.ints([end]), b.ints([0]), b.ints([step])])
        full = b.op("Concat", [b.op("Shape", [tensor], start=0, end=axis), _dim(ctx, ctx.x(), axis)]
                    + ([b.op("Shape", [tensor], start=axis + 1)] if axis + 1 < rank else []), axis=0)
        tensor = _scatter_along(ctx, tensor, axis, positions, full)
    return ctx.only(0, tensor)


@vjp(GATHER)
def gather(ctx: Context, seeds):
    """Scatter-add back to the gathered positions (indices constant or computed)."""
    x, b = ctx.x(), ctx.b
    rank = ctx.rank(x)
    if rank is None or ctx.rank(ctx.x(1)) is None:
        raise UnsupportedOpError("Gather", ctx.name, "the rank of its data or indices is unknown")
    axis = _axis(ctx, rank, x, "it gathers along")
    indices = ctx.const(1)
    x_shape = ctx.shape(x)
    if indices is not None and x_shape[axis] is not None:
        indices = indices.astype(np.int64)
        positions = b.const(np.where(indices < 0, indices + x_shape[axis], indices).ravel(), hint="indices")
    else:
        dim = _dim(ctx, x, axis)
        positions = b.op("Cast", [b.op("Reshape", [ctx.x(1), b.ints([-1])])], to=TensorProto.INT64)
        positions = b.op("Where", [b.op("Less", [positions, b.ints([0])]), b.op("Add", [positions, dim]), positions])
    # the gathered axes flattened into one: x's dims before and after the axis, -1 between
    flat_shape = b.op("Concat", [b.op("Shape", [x], start=0, end=axis), b.ints([-1]),
                                 b.op("Shape", [x], start=axis + 1)], axis=0)
    flat = b.op("Reshape", [seeds[0], flat_shape])
    return ctx.only(0, _scatter_along(ctx, flat, axis, positions, b.op("Shape", [x])))


@vjp(TILE)
def tile(ctx: Context, seeds):
    """Each copy's share summed back."""
    x_shape = ctx.static_shape(ctx.x())
    repeats = [int(r) for r in _required_const(ctx, 1, "repeats")]
    if repeats[0] != 1:
        _refuse_batch(ctx, ctx.x(), 0, "it tiles")
    if repeats[0] != 1 and x_shape[0] is None:
        raise UnsupportedOpError("Tile", ctx.name, "it tiles axis 0, whose size is not static")
    b = ctx.b
    split_shape, summed = ([0] if repeats[0] == 1 else []), []
    for axis in range(1 if repeats[0] == 1 else 0, len(x_shape)):
        if repeats[axis] != 1:
            summed.append(len(split_shape))
            split_shape.append(repeats[axis])
        split_shape.append(x_shape[axis])
    if not summed:
        return ctx.only(0, seeds[0])
    tiles = b.op("Reshape", [seeds[0], b.ints(split_shape)])
    return ctx.only(0, b.op("ReduceSum", [tiles, b.ints(summed)], keepdims=0))
