"""Resize (nearest, linear, cubic): linear maps of their input (kind "pool", Norm by default, docs/rules.md).

Resize acts on each axis separately, so J is a product of one small matrix per resized axis
(out_k x in_k). Each matrix is computed once, at compile time, by resizing the unit vectors with the
node's own attributes, and J^T is two MatMuls at run time.
"""
from __future__ import annotations

import numpy as np
import onnx

from ..errors import UnsupportedOpError
from .context import Context
from .evaluate import evaluate_node
from .registry import family, vjp

RESIZE = family("resize", "Resize", kind="pool")


def _axis_matrix(ctx: Context, axis: int, rank: int, n_in: int, n_out: int, scale: float | None) -> np.ndarray:
    """A (n_out x n_in): the node's resize along one axis, applied to the unit vectors."""
    shape = [1] * rank
    shape[0], shape[axis] = n_in, n_in
    basis = np.zeros(shape, np.float32)
    for i in range(n_in):
        basis[(i,) + (0,) * (axis - 1) + (i,)] = 1.0
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in ctx.node.attribute
             if a.name not in ("axes", "keep_aspect_ratio_policy")}
    if scale is not None:
        scales = np.ones(rank, np.float32)
        scales[axis] = scale
        out = evaluate_node("Resize", [basis, None, scales], opset=19, **attrs)
    else:
        sizes = np.array(shape, np.int64)
        sizes[axis] = n_out
        out = evaluate_node("Resize", [basis, None, None, sizes], opset=19, **attrs)
    out = np.moveaxis(out.reshape(n_in, *out.shape[1:]), axis, -1).reshape(n_in, n_out)
    return out.T


def _scales(ctx: Context, rank: int) -> list[float] | None:
    """The per-axis scales the node uses, or None where it is given output sizes (then the statically
    inferred output shape says what they are)."""
    if str(ctx.attr("keep_aspect_ratio_policy", "stretch")) != "stretch":
        raise UnsupportedOpError("Resize", ctx.name, "keep_aspect_ratio_policy other than 'stretch' is not supported")
    axes = ctx.attr("axes")
    has_scales = len(ctx.node.input) > 2 and ctx.node.input[2]
    scales = ctx.const(2) if has_scales else None
    if scales is not None and scales.size:
        full = np.ones(rank, np.float32)
        full[list(axes) if axes else slice(None)] = scales
        return [float(v) for v in full]
    if has_scales and scales is None:
        raise UnsupportedOpError("Resize", ctx.name, "its scales are computed at run time")
    return None


@vjp(RESIZE)
def resize(ctx: Context, seeds):
    if str(ctx.attr("coordinate_transformation_mode", "")) == "tf_crop_and_resize":
        raise UnsupportedOpError(ctx.node.op_type, ctx.name, "tf_crop_and_resize depends on a region of interest "
                                 "and is not supported")
    x_shape, y_shape = ctx.static_shape(ctx.x()), ctx.static_shape(ctx.y())
    rank = len(x_shape)
    scales = _scales(ctx, rank)
    b = ctx.b
    if scales is not None and scales[0] != 1.0:
        raise UnsupportedOpError(ctx.node.op_type, ctx.name, "it resizes the batch axis")
    back = seeds[0]
    for axis in range(1, rank):
        scale = scales[axis] if scales is not None else None
        if x_shape[axis] == y_shape[axis] and (scale is None or scale == 1.0):
            continue
        if axis < rank - 2:
            raise UnsupportedOpError(ctx.node.op_type, ctx.name, f"it resizes axis {axis}; only the last two "
                                     "(spatial) axes can be resized")
        matrix = _axis_matrix(ctx, axis, rank, x_shape[axis], y_shape[axis], scale)
        if axis == rank - 1:
            back = b.op("MatMul", [back, b.const(matrix, hint="resize_matrix")])
        else:
            back = b.op("MatMul", [b.const(np.ascontiguousarray(matrix.T), hint="resize_matrix_t"), back])
    return ctx.only(0, back)
