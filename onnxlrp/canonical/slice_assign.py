"""A slice assignment exported as a ScatterND over a box of indices becomes Pad + Where.

torch's TorchScript exporter writes `x[:, :, :, :n] = y` (transformers' causal-mask construction, in every
decoder exported that way) as ScatterND(x, indices, y) whose indices list every element of the box: one
int64 [..., rank] grid built from a Range per axis. At a prompt of S tokens that grid is [1, 1, S, S, 4]
int64, 8 times the mask itself (512 MiB at 4096 tokens), and it was the explainer's peak. The same write
without the grid: y padded to x's shape at the box's place, chosen by a mask of the box.

Matched (anything else stays a ScatterND): indices = Concat(axis -1) of one Unsqueeze(-1) per axis k of
Expand(r_k laid along axis k, shape), each r_k a Range(start >= 0, limit, 1) or a step-1 Slice of one: the
grid of the box with corner (r_0[0], r_1[0], ...) and sides len(r_k). ScatterND's indices must not repeat
(ONNX leaves such updates' order unspecified), so y's shape is the box's. A box that leaves x
fails at run time, as onnxruntime's ScatterND does.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .names import unique_name


def unscatter_slice_assignments(graph: gs.Graph) -> gs.Graph:
    for node in list(graph.nodes):
        if node.op != "ScatterND" or _attr(node, "reduction", "none") != "none" or len(node.inputs) != 3:
            continue
        ranges = _box_ranges(node.inputs[1])
        if ranges is not None:
            _replace(graph, node, ranges)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return graph


def _attr(node: gs.Node, name: str, default):
    value = node.attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else value


def _producer(tensor, *ops: str) -> gs.Node | None:
    if isinstance(tensor, gs.Constant) or len(tensor.inputs) != 1 or tensor.inputs[0].op not in ops:
        return None
    return tensor.inputs[0]


def _constant(tensor) -> np.ndarray | None:
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = _producer(tensor, "Constant")
    value = node.attrs.get("value") if node is not None else None
    return np.asarray(value.values) if isinstance(value, gs.Constant) else None


def _box_ranges(indices) -> list | None:
    """The 1-D range of each axis, in order, if `indices` is the grid of a box; else None."""
    concat = _producer(indices, "Concat")
    if concat is None:
        return None
    rank = len(concat.inputs)
    if _attr(concat, "axis", None) not in (-1, rank):
        return None
    ranges = []
    for axis, column in enumerate(concat.inputs):
        unsqueeze = _producer(column, "Unsqueeze")
        if unsqueeze is None:
            return None
        axes = _constant(unsqueeze.inputs[1]) if len(unsqueeze.inputs) > 1 else np.array(_attr(unsqueeze, "axes", []))
        if axes is None or [int(a) for a in axes.reshape(-1)] not in ([-1], [rank]):
            return None
        expand = _producer(unsqueeze.inputs[0], "Expand")
        if expand is None:
            return None
        values = _along_axis(expand.inputs[0], axis, rank)
        if values is None or not _contiguous(values):
            return None
        ranges.append(values)
    return ranges


def _along_axis(tensor, axis: int, rank: int):
    """The 1-D tensor that `tensor` lays along `axis` of a rank-`rank` broadcast, or None."""
    reshape = _producer(tensor, "Reshape")
    if reshape is None:
        return tensor if axis == rank - 1 else None   # a 1-D tensor broadcasts along the last axis
    shape = _constant(reshape.inputs[1])
    if shape is None or shape.ndim != 1 or len(shape) > rank:
        return None
    place = rank - len(shape)                          # broadcasting aligns shapes on the right
    others = [int(d) for i, d in enumerate(shape) if i + place != axis]
    if axis < place or any(d != 1 for d in others):
        return None
    return reshape.inputs[0]


def _contiguous(tensor) -> bool:
    """Whether `tensor` is 1-D, ascending by 1 and non-negative: a Range(start >= 0, limit, 1), or a step-1
    Slice of one."""
    slice_ = _producer(tensor, "Slice")
    if slice_ is not None:
        axes = _constant(slice_.inputs[3]) if len(slice_.inputs) > 3 and slice_.inputs[3].name else np.array([0])
        steps = _constant(slice_.inputs[4]) if len(slice_.inputs) > 4 and slice_.inputs[4].name else np.array([1])
        if axes is None or steps is None or axes.reshape(-1).tolist() not in ([0], [-1]) \
                or steps.reshape(-1).tolist() != [1]:
            return False
        return _contiguous(slice_.inputs[0])
    range_ = _producer(tensor, "Range")
    if range_ is None:
        return False
    start, delta = _constant(range_.inputs[0]), _constant(range_.inputs[2])
    return (start is not None and delta is not None and start.size == delta.size == 1
            and np.issubdtype(start.dtype, np.integer) and int(start.reshape(-1)[0]) >= 0
            and int(delta.reshape(-1)[0]) == 1)


def _replace(graph: gs.Graph, scatter: gs.Node, ranges: list) -> None:
    data, _, updates = scatter.inputs
    result = scatter.outputs[0]
    name = scatter.name or result.name

    def op(kind: str, *inputs, dtype=np.int64, **attrs) -> gs.Variable:
        out = gs.Variable(unique_name(graph, f"{name}/box/{kind.lower()}"), dtype=dtype)
        graph.nodes.append(gs.Node(kind, unique_name(graph, f"{name}/box/{kind}"), attrs=attrs,
                                   inputs=list(inputs), outputs=[out]))
        return out

    def const(label: str, values) -> gs.Constant:
        return gs.Constant(unique_name(graph, f"{name}/box/{label}"), np.array(values, np.int64))

    dims = op("Shape", data)
    corners, sides, inside = [], [], None
    for axis, values in enumerate(ranges):
        values = op("Cast", values, to=7)              # int64, as the shape it is compared with
        corner = op("Slice", op("Concat", values, const("zero", [0]), axis=0), const("first", [0]),
                    const("one", [1]))                 # the range's first value (0 if it is empty)
        side = op("Shape", values)
        position = op("Range", const("start", 0), op("Gather", dims, const("axis", axis), axis=0),
                      const("step", 1))
        on_axis = op("And", op("GreaterOrEqual", position, corner, dtype=np.bool_),
                     op("Less", position, op("Add", corner, side), dtype=np.bool_), dtype=np.bool_)
        shape = [1] * len(ranges)
        shape[axis] = -1
        on_axis = op("Reshape", on_axis, const("lay", shape), dtype=np.bool_)
        inside = on_axis if inside is None else op("And", inside, on_axis, dtype=np.bool_)
        corners.append(corner)
        sides.append(side)
    corner = op("Concat", *corners, axis=0)
    after = op("Sub", op("Sub", dims, corner), op("Concat", *sides, axis=0))
    after = op("Max", after, const("none", [0]))     # a box past x's end: the Reshape below fails, as ScatterND does
    placed = op("Pad", updates, op("Concat", corner, after, axis=0), dtype=updates.dtype or data.dtype)
    # data's shape, said once more: onnxruntime's symbolic shape inference misreads a Pad by computed pads
    # (it gave a causal mask 8 heads), and the head split and the low form's dims read that inference
    placed = op("Reshape", placed, dims, dtype=placed.dtype)
    scatter.outputs.clear()
    graph.nodes.append(gs.Node("Where", unique_name(graph, f"{name}/box/Where"),
                               inputs=[inside, placed, data], outputs=[result]))
