"""The explained row: a peephole pass over the emitted relevance nodes of a sequence output.

A sequence output [batch, seq, vocab] is explained at one position per sample, so its start is non-zero in one
row: the outer product of a one-hot over the positions and a row over the vocabulary (start.py). Whatever the walk
does to it before the vocabulary projection's matrix product is element-wise, and a product of an outer product
with a matrix is the outer product of the row's product, (a x s) . M = a x (s . M). This pass follows the start
through the products and quotients the walk emits on it (taking the other operand's row at the explained
position), computes the first matrix product with a weight on the row alone, [batch, vocab] . [vocab, hidden]
instead of [batch * seq, vocab] . [vocab, hidden], and writes its result back as the outer product. No
[batch, seq, vocab] tensor is left in the relevance pass. The same numbers: the rows it skips are zeros.

Anything else that reads one of these tensors reads it whole, as emitted (assembly drops what nothing reads).
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import NodeProto, numpy_helper

from ..ops.context import Builder


@dataclass(frozen=True)
class ExplainedRow:
    seed: str       # the start, [batch, seq, vocab] = Unsqueeze(at, 2) * Unsqueeze(row, 1)
    at: str         # the one-hot of the explained position, [batch, seq]
    row: str        # the start's row, [batch, vocab]
    position: str   # the explained position per sample (non-negative), [batch]
    output: str     # the explained output, shaped as the seed


_ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Where", "GreaterOrEqual", "Greater", "Less", "LessOrEqual", "Equal",
               "Cast", "Neg", "Abs", "Relu", "Sign", "Reciprocal")
_PASS_RANK = ("DequantizeLinear", "Cast", "Identity", "Neg", "Transpose")


def compute_on_row(nodes: list[NodeProto], explained: ExplainedRow, b: Builder, forward_shape) -> list[NodeProto]:
    """`nodes` with the matrix products of the explained row computed on the row. forward_shape(name): a forward
    tensor's dims (ints, None where dynamic) or None."""
    producer = {out: node for node in nodes for out in node.output}
    shapes = _Shapes(producer, forward_shape, {t.name: t for t in b.initializers})
    shapes.same[explained.seed] = explained.output
    rows = {explained.seed: (explained.row, "full")}   # tensor -> (its row, "full" [b, s, v] or "flat" [b * s, v])
    saved, b.nodes = b.nodes, []
    b.set_scope("output/row")
    result = []
    try:
        for node in nodes:
            replacement = _on_row(node, rows, explained, b, shapes)
            result.extend(b.nodes)
            b.nodes = []
            result.extend(replacement if replacement is not None else [node])
    finally:
        b.nodes = saved
    return result


def _on_row(node: NodeProto, rows: dict, explained: ExplainedRow, b: Builder, shapes) -> list[NodeProto] | None:
    """Row nodes for `node` (appended to b.nodes) and what replaces it: None keeps it (it still computes the whole
    tensor, for whatever reads it whole), a list replaces it."""
    sparse = [name for name in node.input if name in rows]
    if not sparse or len(node.output) != 1:
        return None
    row, layout = rows[sparse[0]]
    op = node.op_type
    if op in ("Mul", "Div") and len(node.input) == 2 and len(sparse) == 1:
        if op == "Div" and node.input[0] not in rows:    # u / (a x s): not a row
            return None
        other = node.input[1] if node.input[0] in rows else node.input[0]
        other_row = _row_of(other, layout, explained, b, shapes)
        if other_row is None:
            return None
        operands = [row, other_row] if node.input[0] in rows else [other_row, row]
        rows[node.output[0]] = (b.op(op, operands, hint="row"), layout)
        return None
    if op == "Reshape" and layout == "full" and node.input[0] in rows:
        if shapes.flattens(node.input[1], shapes.last_dim(node.input[0])):
            rows[node.output[0]] = (row, "flat")
        return None
    if op in ("MatMul", "Gemm") and node.input[0] in rows and node.input[1] not in rows:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if shapes.rank(node.input[1]) != 2 or (op == "Gemm" and (len(node.input) > 2 or attrs.get("transA", 0))):
            return None
        product = b.op(op, [row, node.input[1]], hint="row", **attrs)
        outer = b.op("Mul", [b.op("Unsqueeze", [explained.at, b.ints([2])]),
                             b.op("Unsqueeze", [product, b.ints([1])])], hint="outer")
        return [onnx.helper.make_node("Identity" if layout == "full" else "Flatten", [outer], list(node.output),
                                      name=node.name, **({} if layout == "full" else {"axis": 2}))]
    return None


def _row_of(name: str, layout: str, explained: ExplainedRow, b: Builder, shapes) -> str | None:
    """The other operand of a product or quotient, as it broadcasts against the row: itself where it does not
    vary along the positions, its row at the explained position where it does, None where that is not known."""
    shape = shapes.shape(name)
    if shape is None:
        return None
    if len(shape) <= 1 or (len(shape) == 2 and shape[0] == 1):
        return name
    if layout == "flat":   # [batch * seq, vocab], as the forward flattened it: seen as [batch, seq, vocab]
        if len(shape) != 2:
            return None
        name = b.op("Reshape", [name, b.op("Concat", [b.op("Shape", [explained.at]), b.ints([-1])], axis=0)])
        shape = (None, None, shape[1])
    if len(shape) != 3:
        return None
    if shape[1] == 1:
        return b.op("Squeeze", [name, b.ints([1])])
    if shape[0] == 1:   # one table of rows for every sample
        return b.op("Gather", [b.op("Squeeze", [name, b.ints([0])]), explained.position], axis=0, hint="row_of")
    index = b.op("Expand", [b.op("Unsqueeze", [explained.position, b.ints([1, 2])]),
                            b.op("Concat", [b.ints([1, 1]), b.op("Shape", [name], start=2, end=3)], axis=0)])
    return b.op("Squeeze", [b.op("GatherElements", [name, index], axis=1, hint="row_of"), b.ints([1])])


class _Shapes:
    """Dims of the tensors the pass meets: forward tensors from the forward graph, initialisers from their dims,
    relevance tensors computed element-wise from those by broadcasting."""

    def __init__(self, producer: dict[str, NodeProto], forward_shape, constants: dict[str, onnx.TensorProto]):
        self.producer, self.forward_shape, self.constants = producer, forward_shape, constants
        self.same: dict[str, str] = {}   # a relevance tensor -> a forward tensor of its shape

    def shape(self, name: str) -> tuple | None:
        if name in self.same:
            return self.forward_shape(self.same[name])
        if name in self.constants:
            return tuple(self.constants[name].dims)
        node = self.producer.get(name)
        if node is None:
            return self.forward_shape(name)
        if node.op_type in _ELEMENTWISE:
            parts = [self.shape(i) for i in node.input if i]
            return None if any(p is None for p in parts) else _broadcast(parts)
        return None

    def rank(self, name: str) -> int | None:
        shape = self.shape(name)
        if shape is not None:
            return len(shape)
        node = self.producer.get(name)
        if node is not None and node.op_type in _PASS_RANK and node.input:
            return self.rank(node.input[0])
        return None

    def last_dim(self, name: str) -> int | None:
        shape = self.shape(name)
        return shape[-1] if shape else None

    def flattens(self, target: str, last: int | None) -> bool:
        """Is `target` (a Reshape's shape) [-1, last], or the shape of a [rows, last] tensor?"""
        if last is None:
            return False
        tensor, node = self.constants.get(target), self.producer.get(target)
        if tensor is not None:
            return len(tensor.dims) == 1 and numpy_helper.to_array(tensor).tolist() == [-1, last]
        if node is not None and node.op_type == "Shape" and not node.attribute:
            shape = self.shape(node.input[0])
            return shape is not None and len(shape) == 2 and shape[1] == last
        return False


def _broadcast(shapes: list[tuple]) -> tuple:
    rank = max(len(s) for s in shapes)
    dims = []
    for k in range(rank):
        column = [s[len(s) - rank + k] for s in shapes if len(s) - rank + k >= 0]
        known = [d for d in column if d is not None and d != 1]
        dims.append(known[0] if known else (None if None in column else 1))
    return tuple(dims)
