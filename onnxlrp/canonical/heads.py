"""Attention one head at a time, for the bounded-memory explainer (memory="low").

An attention's scores and probabilities are [batch, heads, queries, keys] tensors: at 4096 tokens and 8 heads,
512 MiB each. The bounded-memory explainer recomputes them in the relevance pass, one block at a time, but a
block's attention still holds several of them at once (the recomputed probabilities, the gradient at them,
the softmax rule's temporaries). Split per head, the same computation runs as `heads` independent chains,

    Q, K^T, V --Split(axis 1)--> per head: MatMul(Q_h, K^T_h) -> scale / mask ops -> Softmax -> MatMul(., V_h)
    --Concat(axis 1)--> the attention's output

and onnxruntime, which orders nodes by a depth-first walk back from the outputs, finishes one head's chain
(forward and relevance) before it starts the next: one head's [queries, keys] tensors are alive at a time.
Each head computes the products the batched MatMul computed for it, so the outputs stay those of the model
(bit for bit where the matrix product sums in the same order per head, as in the tests; 1e-6 relative on the
ViT-B/16 of docs/performance.md).

The pattern: Softmax on the last axis of a rank-4 tensor, computed from MatMul(Q, K^T) by element-wise ops
(Add, Sub, Mul, Div, Where) whose other operands have 1 or `heads` on axis 1 (masks, scales), each tensor of
the chain read only by the next op, and the probabilities read (through Casts) only by MatMul(probabilities,
V). The head count comes from onnxruntime's symbolic shape inference, which follows an export's computed
reshapes (ONNX's own leaves their dims unknown); where it fails, nothing is split.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .names import unique_name
from .shapes import exported, symbolic_dims

ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Where")
HEAD_AXIS = 1


@dataclass
class HeadChain:
    """One head's chain after the split, by the names of its tensors and nodes."""
    queries: str            # Q_h, the scores product's first operand
    keys: str               # K^T_h, its second
    values: str             # V_h, the output product's second operand
    output: str             # the head's output, MatMul(probabilities, V_h)
    nodes: list[str]        # the chain's nodes in forward order, the scores product first, the output product last


@dataclass
class SplitAttention:
    splits: list[str]                                   # the Split nodes that cut its operands (output h: head h's)
    heads: list[HeadChain] = field(default_factory=list)


def split_attention_heads(model: onnx.ModelProto, dims: dict[str, list] | None = None
                          ) -> tuple[onnx.ModelProto, list[SplitAttention]]:
    """The model with every attention found split per head (the module's docstring), and per attention its
    Split nodes and its heads' chains; the model itself and [] where there is none. `dims`: the model's
    symbolic_dims, where the caller has them."""
    dims = symbolic_dims(model) if dims is None else dims
    if not dims:
        return model, []
    graph = gs.import_onnx(model)
    outputs = {t.name for t in graph.outputs}
    attentions = [found for node in graph.nodes
                  if node.op == "Softmax" and (found := _attention(node, dims, outputs))]
    if not attentions:
        return model, []
    splits = [_split(graph, dims, *attention) for attention in attentions]
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return exported(graph, model.ir_version), splits


def _shape(tensor, dims: dict) -> list | None:
    if isinstance(tensor, gs.Constant):
        return list(tensor.shape)
    return dims.get(tensor.name)


def _heads(tensor, dims: dict) -> int | None:
    shape = _shape(tensor, dims)
    if shape is None or len(shape) != 4 or not isinstance(shape[HEAD_AXIS], int):
        return None
    return shape[HEAD_AXIS]


def _single_use(tensor: gs.Variable, graph_outputs: set) -> bool:
    return isinstance(tensor, gs.Variable) and len(tensor.outputs) == 1 and tensor.name not in graph_outputs


def _attention(softmax: gs.Node, dims: dict, outputs: set):
    """(scores MatMul, [(element-wise op, its input along the chain)] from the scores to the Softmax, [Softmax,
    Casts after it], output MatMul, heads) or None."""
    scores = softmax.inputs[0]
    heads = _heads(scores, dims)
    if heads is None or heads < 2 or int(softmax.attrs.get("axis", -1)) not in (-1, 3):
        return None
    probabilities, casts = softmax.outputs[0], []
    while _single_use(probabilities, outputs) and probabilities.outputs[0].op == "Cast":   # torch's dtype casts
        casts.append(probabilities.outputs[0])
        probabilities = casts[-1].outputs[0]
    if not _single_use(probabilities, outputs) or probabilities.outputs[0].op != "MatMul" \
            or probabilities.outputs[0].inputs[0] is not probabilities:
        return None
    output = probabilities.outputs[0]
    chain, tensor = [], scores
    while True:
        if not _single_use(tensor, outputs) or not tensor.inputs:
            return None
        node = tensor.inputs[0]
        if node.op == "MatMul":
            break
        if node.op not in ELEMENTWISE:
            return None
        along = [i for i, t in enumerate(node.inputs) if _heads(t, dims) == heads and t.inputs
                 and t.inputs[0].op in ELEMENTWISE + ("MatMul",) and _single_use(t, outputs)]
        if len(along) != 1 or (node.op == "Where" and along[0] == 0):
            return None
        if any(not _per_head_operand(t, heads, dims) for i, t in enumerate(node.inputs) if i != along[0]):
            return None
        chain.append((node, along[0]))
        tensor = node.inputs[along[0]]
    matmul = tensor.inputs[0]
    if not all(_per_head_operand(t, heads, dims) and _heads(t, dims) is not None
               for t in matmul.inputs + output.inputs[1:]):
        return None
    return matmul, chain[::-1], [softmax] + casts, output, heads


def _per_head_operand(tensor, heads: int, dims: dict) -> bool:
    """An operand each head can read its part of: 1 or `heads` on the head axis, or too short to have one."""
    shape = _shape(tensor, dims)
    if shape is None:
        return False
    if len(shape) < 4 - HEAD_AXIS:       # right-aligned broadcasting: no head axis
        return True
    return len(shape) == 4 and shape[HEAD_AXIS] in (1, heads)


def _split(graph: gs.Graph, dims: dict, matmul: gs.Node, chain: list, normalise: list, output: gs.Node,
           heads: int) -> SplitAttention:
    """The attention split per head."""
    parts: dict[int, list] = {}
    splits: list[str] = []

    def per_head(tensor, h: int):
        """Head h's part of an operand: a Split output where it has the heads, else the operand itself."""
        shape = _shape(tensor, dims)
        if len(shape) < 4 - HEAD_AXIS or shape[HEAD_AXIS] == 1:
            return tensor
        if id(tensor) not in parts:
            name = unique_name(graph, f"{tensor.name}/per_head")
            outputs = [gs.Variable(f"{name}/{k}", dtype=tensor.dtype) for k in range(heads)]
            sizes = gs.Constant(unique_name(graph, f"{name}/sizes"), np.ones(heads, np.int64))
            graph.nodes.append(gs.Node("Split", name, {"axis": HEAD_AXIS}, inputs=[tensor, sizes], outputs=outputs))
            parts[id(tensor)] = outputs
            splits.append(name)
        return parts[id(tensor)][h]

    def copy(node: gs.Node, h: int, inputs: list, names: list[str]) -> gs.Variable:
        result = gs.Variable(unique_name(graph, f"{node.outputs[0].name}/head{h}"), dtype=node.outputs[0].dtype)
        names.append(unique_name(graph, f"{node.name}/head{h}"))
        graph.nodes.append(gs.Node(node.op, names[-1], dict(node.attrs), inputs=inputs, outputs=[result]))
        return result

    results, chains = [], []
    for h in range(heads):
        names: list[str] = []
        queries, keys, values = (per_head(t, h) for t in (*matmul.inputs, output.inputs[1]))
        tensor = copy(matmul, h, [queries, keys], names)
        for node, along in chain:
            tensor = copy(node, h, [tensor if i == along else per_head(t, h) for i, t in enumerate(node.inputs)],
                          names)
        for node in normalise:   # the Softmax and the Casts after it
            tensor = copy(node, h, [tensor], names)
        results.append(copy(output, h, [tensor, values], names))
        chains.append(HeadChain(queries.name, keys.name, values.name, results[-1].name, names))
    joined = output.outputs[0]
    output.outputs.clear()
    graph.nodes.append(gs.Node("Concat", unique_name(graph, f"{output.name}/heads"), {"axis": HEAD_AXIS},
                               inputs=results, outputs=[joined]))
    return SplitAttention(splits, chains)
