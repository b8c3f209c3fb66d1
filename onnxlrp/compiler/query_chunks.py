"""One head's relevance over its queries in chunks, in an ONNX Loop (the bounded-memory form, memory="low").

Split per head (canonical/heads.py), an attention's relevance still holds one head's [queries, keys] tensors:
the recomputed scores and probabilities, the signal at the probabilities, the softmax rule's temporaries;
at 4096 tokens 64 MiB each, the only terms of the low form that grow with the square of the prompt besides
the model's own mask. Every one of them is row-wise in the queries: row i of the scores, the probabilities
and their relevance depends on query i, the keys and the values only. So the walk sends a head's relevance
in chunks of `chunk` queries, in a Loop whose body

  - slices the chunk's rows of Q, of the operands that have a query axis (the mask) and of the signal
    arriving at the head's output;
  - computes the chain's forward on them (the scores product to the output product: [chunk, keys] tensors);
  - walks the chain's nodes with their own rules (Walk.visit, the same code as everywhere), on these rows;
  - appends the chunk's signal at Q and adds its signal at K^T and V (sums over the queries) to carried
    accumulators.

The Loop's outputs are what the walk would have sent to Q, K^T and V, up to the order of those sums
(tests/compiler/test_query_chunks.py). Every tensor it holds is [chunk, keys] or smaller: linear in the
prompt. A head is chunked where its query axis is dynamic (a decoder's sequence; a fixed-size export keeps the
whole chain, whose reshapes may name that size) and no operand but Q, K^T and V carries relevance.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..canonical.heads import HeadChain
from .assemble import live_nodes
from .signals import Signal, gather

QUERY_CHUNK = 1024   # rows per chunk: docs/performance.md, "Queries in chunks" (512 costs more per iteration)


def chunkable(chain: HeadChain, analysis, forward_nodes: dict[str, onnx.NodeProto]) -> bool:
    fwd = analysis.fwd
    queries = fwd.shape(chain.queries)
    if queries is None or len(queries) < 2 or queries[-2] is not None:
        return False
    if len({chain.queries, chain.keys, chain.values}) < 3 or any(name in analysis.blocks for name in chain.nodes):
        return False
    for operand in _operands(chain, forward_nodes):
        if operand in (chain.queries, chain.keys, chain.values):
            continue
        if analysis.carries(operand) or (fwd.const(operand) is None and fwd.shape(operand) is None):
            return False
    return True


def _operands(chain: HeadChain, forward_nodes: dict[str, onnx.NodeProto]) -> list[str]:
    """The inputs of the chain's nodes that the chain does not compute itself."""
    nodes = [forward_nodes[name] for name in chain.nodes]
    made = {o for node in nodes for o in node.output}
    return [name for node in nodes for name in node.input if name and name not in made]


def _has_query_axis(analysis, name: str) -> bool:
    """An operand whose second-to-last axis lines up with the queries and is not 1 (a mask's rows)."""
    constant = analysis.fwd.const(name)
    shape = constant.shape if constant is not None else analysis.fwd.shape(name)
    return len(shape) >= 2 and shape[-2] != 1


def relevance_over_query_chunks(walk, chain: HeadChain, received: dict[str, list[Signal]], walked,
                                chunk: int) -> None:
    """What the walk sends from the head's output to Q, K^T and V (into `received`), computed in a Loop over
    chunks of `chunk` queries (the module's docstring)."""
    b, analysis = walk.b, walk.analysis
    arriving = gather(b, received.pop(chain.output, None), chain.output, chain.nodes[-1])
    if arriving is None:
        return
    b.set_scope(f"{chain.nodes[-1]}/query_chunks")
    query_axis = b.ints([-2])   # the second-to-last, in Q, the mask, the signals alike
    queries = b.op("Gather", [b.op("Shape", [chain.queries]), query_axis])
    trips = b.op("Div", [b.op("Add", [queries, b.ints([chunk - 1])]), b.ints([chunk])])
    trips = b.op("Reshape", [trips, b.ints([])])
    always = b.const(np.array(True), hint="true")
    iteration, condition = b.fresh("iteration"), b.fresh("condition")

    first = len(b.nodes)
    start = b.op("Mul", [b.op("Reshape", [iteration, b.ints([1])]), b.ints([chunk])])
    stop = b.op("Add", [start, b.ints([chunk])])
    rows = {}   # forward tensor -> its chunk's rows, inside the body

    def sliced(name: str) -> str:
        return b.op("Slice", [name, start, stop, query_axis], hint="rows")

    rows[chain.queries] = sliced(chain.queries)
    for operand in _operands(chain, walk.forward_nodes):
        if operand not in rows and operand not in (chain.keys, chain.values) and _has_query_axis(analysis, operand):
            rows[operand] = sliced(operand)
    for name in chain.nodes:   # the chain's forward on the rows
        node = onnx.NodeProto()
        node.CopyFrom(walk.forward_nodes[name])
        node.name = f"{name}/rows"
        node.input[:] = [rows.get(i, i) for i in node.input]
        for k, output in enumerate(node.output):
            rows[output] = node.output[k] = f"{output}/rows"
        b.nodes.append(node)
    walked_from = len(b.nodes)
    local = {chain.output: [Signal(sliced(arriving.name), arriving.form)]}
    in_chain = set(chain.nodes)
    for node in reversed(analysis.path):
        if node.name in in_chain:
            walk.visit(node, local, walked)
    b.set_scope(f"{chain.nodes[-1]}/query_chunks")
    sent = {name: gather(b, local.pop(name, None), name, f"{name}/rows") for name in
            (chain.queries, chain.keys, chain.values)}
    sent = {name: signal for name, signal in sent.items() if signal is not None}
    if not sent:   # nothing reaches Q, K^T or V (a head whose output the start does not depend on)
        del b.nodes[first:]
        return
    for node in b.nodes[walked_from:]:   # the rules read the forward tensors by name: here, the chunk's rows
        node.input[:] = [rows.get(i, i) for i in node.input]

    carried = []
    for name, signal in sent.items():
        before, after = b.fresh("carried"), b.fresh("carried")
        if name == chain.queries:   # the rows of each chunk, appended
            b.op("Concat", [before, signal.name], axis=-2, output=after)
        else:                       # a sum over the queries
            b.op("Add", [before, signal.name], output=after)
        carried.append((before, after))
    continued = b.op("Identity", [condition])
    body_nodes = b.nodes[first:]
    del b.nodes[first:]
    initial = [b.op("Slice", [chain.queries, b.ints([0]), b.ints([0]), query_axis]) if name == chain.queries
               else b.const(np.zeros([1] * len(analysis.fwd.shape(name)), np.float32), hint="zero") for name in sent]
    value = lambda name, elem_type, shape=None: helper.make_tensor_value_info(name, elem_type, shape)  # noqa: E731
    body = helper.make_graph(
        live_nodes(body_nodes, {continued} | {after for _, after in carried}), f"{chain.nodes[-1]}/query_chunks",
        [value(iteration, TensorProto.INT64, []), value(condition, TensorProto.BOOL, [])]
        + [value(before, TensorProto.FLOAT) for before, _ in carried],
        [value(continued, TensorProto.BOOL, [])] + [value(after, TensorProto.FLOAT) for _, after in carried])
    finals = b.op("Loop", [trips, always] + initial, n_out=len(carried), body=body)
    finals = [finals] if len(carried) == 1 else finals
    for (name, signal), final in zip(sent.items(), finals):
        received.setdefault(name, []).append(Signal(final, signal.form))

