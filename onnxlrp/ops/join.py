"""Joins: Add / Sum / Sub of computed tensors (Norm), Concat (exact routing), gated products.

An Add, Sub, Mul or Div with a constant operand (a bias or a normalisation step that could not be
folded into a layer) passes relevance to its computed operand, as docs/rules.md prescribes. A Mul of a
signal by a gate computed from it (squeeze-excitation, Swish, GELU, Mish) holds the gate constant:
all relevance goes to the signal.
"""
from __future__ import annotations

from dataclasses import replace

from ..errors import UnsupportedOpError
from .context import NodeContext
from .registry import register


def _pass_to_live(ctx: NodeContext):
    """Relevance to the single computed operand, summed down over broadcast axes if it was smaller."""
    results = []
    out_shape = ctx.shape(ctx.y())
    for i, live in enumerate(ctx.live):
        if not live:
            results.append(None)
            continue
        in_shape = ctx.shape(ctx.x(i))
        if in_shape is not None and out_shape is not None and len(in_shape) == len(out_shape) and all(
                a == c for a, c in zip(in_shape, out_shape)):
            results.append(ctx.R())
        elif in_shape is None or out_shape is None:
            raise UnsupportedOpError(ctx.node.op_type, ctx.name, "operand shapes are unknown")
        else:
            results.append(ctx.b.unbroadcast(ctx.R(), out_shape, in_shape))
    return results


def _norm(ctx: NodeContext, signs):
    """R_i = sign_i * x_i * R / stab(y) for each computed operand."""
    eps = ctx.norm_stabilizer()
    if eps is None:
        raise UnsupportedOpError(ctx.node.op_type, ctx.name, "Pass is ambiguous for a join of several tensors")
    b = ctx.b
    s = ctx.divide_by_output(ctx.R(), eps)
    out_shape = ctx.shape(ctx.y())
    results = []
    for i, live in enumerate(ctx.live):
        if not live:
            results.append(None)
            continue
        share = b.op("Mul", [ctx.x(i), s])
        if signs[i] < 0:
            share = b.op("Neg", [share])
        in_shape = ctx.shape(ctx.x(i))
        if in_shape != out_shape:
            if in_shape is None or out_shape is None:
                raise UnsupportedOpError(ctx.node.op_type, ctx.name, "operand shapes are unknown")
            share = b.unbroadcast(share, out_shape, in_shape)
        results.append(share)
    return results


@register("Add", "Sum")
def add(ctx: NodeContext):
    """Norm (Pass with a constant operand)"""
    if sum(ctx.live) < 2:
        return _pass_to_live(ctx)
    return _norm(ctx, [1] * len(ctx.node.input))


@register("Sub")
def sub(ctx: NodeContext):
    """Norm (Pass with a constant operand)"""
    if sum(ctx.live) < 2:
        return _pass_to_live(ctx)
    return _norm(ctx, [1, -1])


@register("Mul", "Div")
def scale(ctx: NodeContext):
    """Pass (scaling by a constant, or by a gate computed from the signal: the gate is held constant)"""
    if sum(ctx.live) < 2:
        return _pass_to_live(ctx)
    live = {name for name, is_live in zip(ctx.node.input, ctx.live) if is_live}
    gate = ctx.graph.gate_operand(ctx.node, live)
    if gate is None:
        raise UnsupportedOpError(ctx.node.op_type, ctx.name, "a product of two computed tensors where neither is a "
                                 "gate computed from the other (as in squeeze-excitation or x * sigmoid(x)) has no "
                                 "relevance rule")
    signal_only = [is_live and i != gate for i, is_live in enumerate(ctx.live)]
    return _pass_to_live(replace(ctx, live=signal_only))


@register("Concat")
def concat(ctx: NodeContext):
    """routing (split back)"""
    out_shape = ctx.shape(ctx.y())
    axis = int(ctx.attr("axis"))
    axis = axis + len(out_shape) if axis < 0 else axis
    sizes = []
    for name in ctx.node.input:
        shape = ctx.shape(name)
        if shape is None or shape[axis] is None:
            raise UnsupportedOpError("Concat", ctx.name, f"the size of input '{name}' along axis {axis} is not static")
        sizes.append(shape[axis])
    parts = ctx.b.op("Split", [ctx.R(), ctx.b.ints(sizes)], n_out=len(sizes), axis=axis)
    parts = parts if isinstance(parts, list) else [parts]
    return [part if live else None for part, live in zip(parts, ctx.live)]
