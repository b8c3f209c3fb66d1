"""Ops that select, copy or pad elements: Pad, Slice, Split, Gather (constant indices), Tile, Expand.

Each output element is a copy of one input element (or padding), so relevance goes back exactly to
where it came from; relevance on padded elements is dropped (docs/rules.md). Geometry (pads, starts,
indices) must be constant, and the batch axis must be left alone.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOpError
from .context import NodeContext
from .registry import register


def _axes(ctx: NodeContext, values, rank: int, what: str) -> list[int]:
    axes = [int(a) + rank if int(a) < 0 else int(a) for a in values]
    if 0 in axes:
        raise UnsupportedOpError(ctx.node.op_type, ctx.name, f"{what} the batch axis; onnxlrp explains each sample "
                                 "on its own")
    return axes


def _required_const(ctx: NodeContext, i: int, what: str) -> np.ndarray:
    value = ctx.const(i)
    if value is None:
        raise UnsupportedOpError(ctx.node.op_type, ctx.name, f"its {what} (input {i}) is computed at run time; "
                                 "only constant geometry can be routed back")
    return value


def _crop_and_pad(ctx: NodeContext, relevance: str, keep: dict[int, tuple[int, int]],
                  refill: dict[int, tuple[int, int]], rank: int) -> str:
    """Slice [start, stop) on some axes, then pad zeros (before, after) on some axes."""
    b = ctx.b
    if keep:
        axes = sorted(keep)
        relevance = b.op("Slice", [relevance, b.ints([keep[a][0] for a in axes]), b.ints([keep[a][1] for a in axes]),
                                   b.ints(axes)])
    if any(sum(v) for v in refill.values()):
        pads = [refill.get(a, (0, 0))[0] for a in range(rank)] + [refill.get(a, (0, 0))[1] for a in range(rank)]
        relevance = b.op("Pad", [relevance, b.ints(pads)], mode="constant")
    return relevance


@register("Pad")
def pad(ctx: NodeContext):
    """routing (padding dropped)"""
    x_shape = ctx.static_shape(ctx.x())
    rank = len(x_shape)
    pads = [int(p) for p in (_required_const(ctx, 1, "pads") if len(ctx.node.input) > 1 else ctx.attr("pads"))]
    axes = list(range(rank))
    if len(ctx.node.input) > 3 and ctx.node.input[3]:
        axes = [int(a) % rank for a in _required_const(ctx, 3, "axes")]
    begin, end = dict(zip(axes, pads[:len(axes)])), dict(zip(axes, pads[len(axes):]))
    if begin.get(0, 0) or end.get(0, 0):
        _axes(ctx, [0], rank, "it pads")
    keep, refill = {}, {}
    for a in axes:
        if a == 0:
            continue
        cut_before, cut_after = max(-begin[a], 0), max(-end[a], 0)
        start = max(begin[a], 0)
        keep[a] = (start, start + x_shape[a] - cut_before - cut_after)
        refill[a] = (cut_before, cut_after)
    return [_crop_and_pad(ctx, ctx.R(), keep, refill, rank)] + [None] * (len(ctx.node.input) - 1)


def _slice_indices(ctx: NodeContext, x_shape) -> dict[int, list[int]]:
    """Per sliced axis, the input index of each output position."""
    rank = len(x_shape)
    if len(ctx.node.input) > 1:  # opset >= 10: starts, ends, axes, steps as inputs
        starts = _required_const(ctx, 1, "starts")
        ends = _required_const(ctx, 2, "ends")
        axes = ctx.const(3) if len(ctx.node.input) > 3 and ctx.node.input[3] else np.arange(len(starts))
        steps = ctx.const(4) if len(ctx.node.input) > 4 and ctx.node.input[4] else np.ones(len(starts), np.int64)
        if (len(ctx.node.input) > 3 and ctx.node.input[3] and axes is None) or steps is None:
            raise UnsupportedOpError("Slice", ctx.name, "its axes or steps are computed at run time")
    else:
        starts, ends = ctx.attr("starts"), ctx.attr("ends")
        axes = ctx.attr("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    result = {}
    for axis, start, end, step in zip(axes, starts, ends, steps):
        axis, start, end, step = int(axis) % rank, int(start), int(end), int(step)
        if axis == 0:
            if (start, step) != (0, 1) or end < 2**31 - 1:
                _axes(ctx, [0], rank, "it slices")
            continue
        result[axis] = list(range(x_shape[axis])[slice(start, end, step)])
    return result


def _scatter_along(ctx: NodeContext, relevance: str, axis: int, indices, full_shape: tuple, reduce: bool) -> str:
    """J^T of "take `indices` along `axis`": add each slice of `relevance` into position indices[k]."""
    b = ctx.b
    index_shape = [1] * len(full_shape)
    index_shape[axis] = len(indices)
    index = b.op("Expand", [b.const(np.asarray(indices, np.int64).reshape(index_shape), hint="indices"),
                            b.op("Shape", [relevance])])
    target = b.op("Concat", [b.op("Shape", [relevance], start=0, end=1), b.ints(full_shape[1:])], axis=0)
    zeros = b.op("ConstantOfShape", [target])
    attrs = {"reduction": "add"} if reduce else {}
    return b.op("ScatterElements", [zeros, index, relevance], axis=axis, **attrs)


@register("Slice")
def slice_(ctx: NodeContext):
    """routing (put back in place)"""
    x_shape = ctx.static_shape(ctx.x())
    rank = len(x_shape)
    relevance = ctx.R()
    per_axis = _slice_indices(ctx, x_shape)
    contiguous = {a: idx for a, idx in per_axis.items() if len(idx) and idx == list(range(idx[0], idx[-1] + 1))}
    refill = {a: (idx[0], x_shape[a] - 1 - idx[-1]) for a, idx in contiguous.items()}
    relevance = _crop_and_pad(ctx, relevance, {}, refill, rank)
    for axis, indices in sorted(per_axis.items()):
        if axis in contiguous:
            continue
        current = list(x_shape)
        for a, idx in per_axis.items():
            if a not in contiguous and a > axis:
                current[a] = len(idx)
        if not indices:
            raise UnsupportedOpError("Slice", ctx.name, "the slice is empty")
        relevance = _scatter_along(ctx, relevance, axis, indices, tuple(current), reduce=False)
    return [relevance] + [None] * (len(ctx.node.input) - 1)


@register("Split")
def split(ctx: NodeContext):
    """routing (concatenate back)"""
    rank = len(ctx.static_shape(ctx.x()))
    axis = _axes(ctx, [ctx.attr("axis", 0)], rank, "it splits")[0]
    b = ctx.b
    parts = [ctx.R(j) if ctx.R(j) else b.zeros_like(ctx.y(j)) for j in range(len(ctx.node.output))]
    return [b.op("Concat", parts, axis=axis)] + [None] * (len(ctx.node.input) - 1)


@register("Gather")
def gather(ctx: NodeContext):
    """routing (scatter-add back to the gathered positions)"""
    x_shape = ctx.static_shape(ctx.x())
    rank = len(x_shape)
    axis = _axes(ctx, [ctx.attr("axis", 0)], rank, "it gathers along")[0]
    indices = _required_const(ctx, 1, "indices").astype(np.int64)
    indices = np.where(indices < 0, indices + x_shape[axis], indices).ravel()
    b = ctx.b
    flat_shape = list(x_shape[:axis]) + [len(indices)] + list(x_shape[axis + 1:])
    flat_shape[0] = 0  # keep the batch
    relevance = b.op("Reshape", [ctx.R(), b.ints(flat_shape)])
    return [_scatter_along(ctx, relevance, axis, indices, x_shape, reduce=True), None]


@register("Tile")
def tile(ctx: NodeContext):
    """routing (each copy's relevance summed back)"""
    x_shape = ctx.static_shape(ctx.x())
    repeats = [int(r) for r in _required_const(ctx, 1, "repeats")]
    if repeats[0] != 1:
        _axes(ctx, [0], len(x_shape), "it tiles")
    b = ctx.b
    split_shape, summed = [0], []
    for axis in range(1, len(x_shape)):
        if repeats[axis] != 1:
            summed.append(len(split_shape))
            split_shape.append(repeats[axis])
        split_shape.append(x_shape[axis])
    if not summed:
        return [ctx.R(), None]
    tiles = b.op("Reshape", [ctx.R(), b.ints(split_shape)])
    return [b.op("ReduceSum", [tiles, b.ints(summed)], keepdims=0), None]


@register("Expand")
def expand(ctx: NodeContext):
    """routing (each copy's relevance summed back)"""
    x_shape, y_shape = ctx.static_shape(ctx.x()), ctx.static_shape(ctx.y())
    if len(x_shape) == len(y_shape) and x_shape[0] is not None and x_shape[0] != y_shape[0]:
        _axes(ctx, [0], len(x_shape), "it expands")
    return [ctx.b.unbroadcast(ctx.R(), y_shape, x_shape), None]
