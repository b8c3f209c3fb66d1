"""Bring every dense layer into one form: Gemm(x, W[N, K], b, transB=1), alpha = beta = 1.

Gemm attributes are folded into the constants, transA becomes an explicit Transpose, and
MatMul with a constant 2-D weight (plus an Add of a constant bias right after it) becomes a Gemm;
inputs of rank > 2 are flattened to [-1, K] around the Gemm and reshaped back.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from ..errors import UnsupportedModelError
from .names import unique_name


def normalise_dense(graph: gs.Graph) -> gs.Graph:
    for node in list(graph.nodes):
        if node.op == "Gemm":
            _normalise_gemm(graph, node)
        elif node.op == "MatMul":
            _matmul_to_gemm(graph, node)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return graph


def _normalise_gemm(graph: gs.Graph, node: gs.Node) -> None:
    a, b = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    if not isinstance(b, gs.Constant):
        kind = "a constant first operand" if isinstance(a, gs.Constant) else "two computed operands"
        raise UnsupportedModelError(
            f"Gemm node '{node.name}' has {kind}; onnxlrp explains Gemm as a dense layer x @ W + b "
            "with a constant W (re-export the layer with its weight as the second operand)"
        )
    if c is not None and not isinstance(c, gs.Constant):
        raise UnsupportedModelError(
            f"Gemm node '{node.name}' adds a computed tensor C; only a constant bias is supported"
        )
    alpha = float(node.attrs.get("alpha", 1.0))
    beta = float(node.attrs.get("beta", 1.0))
    if alpha == 1.0 and int(node.attrs.get("transB", 0)):
        inputs = [a, b]   # already in form: no copy of the weight
    else:
        weight = loaded(b) if int(node.attrs.get("transB", 0)) else loaded(b).T
        if alpha != 1.0:
            weight = np.asarray(weight.astype(np.float64) * alpha, dtype=weight.dtype)
        inputs = [a, gs.Constant(unique_name(graph, f"{node.name}_W"), np.ascontiguousarray(weight))]
    if c is not None:
        bias = np.asarray(np.asarray(c.values, dtype=np.float64) * beta, dtype=c.values.dtype)
        inputs.append(gs.Constant(unique_name(graph, f"{node.name}_b"), bias))
    if int(node.attrs.get("transA", 0)):
        transposed = gs.Variable(unique_name(graph, f"{a.name}_T"), dtype=a.dtype)
        graph.nodes.append(gs.Node("Transpose", unique_name(graph, f"{node.name}_transA"),
                                   attrs={"perm": [1, 0]}, inputs=[a], outputs=[transposed]))
        inputs[0] = transposed
    node.inputs = inputs
    node.attrs = {"transB": 1}


def _matmul_to_gemm(graph: gs.Graph, node: gs.Node) -> None:
    x, w = node.inputs
    if not isinstance(w, gs.Constant) or len(w.shape) != 2 or isinstance(x, gs.Constant):
        return  # not a dense layer; the MatMul handler reports it if it lies on the relevance path
    rank = len(x.shape) if x.shape is not None else None
    if rank is None or rank < 2:
        return
    out = node.outputs[0]
    k_in, n_out = w.shape
    bias, result = _bias_add_after(graph, out, n_out)
    weight = np.ascontiguousarray(loaded(w).T)
    gemm_inputs = [x, gs.Constant(unique_name(graph, f"{node.name}_W"), weight)]
    if bias is not None:
        gemm_inputs.append(gs.Constant(unique_name(graph, f"{node.name}_b"), bias))
    node.outputs.clear()
    if rank == 2:
        graph.nodes.append(gs.Node("Gemm", node.name, attrs={"transB": 1}, inputs=gemm_inputs,
                                   outputs=[result]))
        return
    # [..., K] -> [-1, K] -> Gemm -> [..., N]
    flat = gs.Variable(unique_name(graph, f"{node.name}_flat_in"), dtype=x.dtype)
    graph.nodes.append(gs.Node("Reshape", unique_name(graph, f"{node.name}_flatten"),
                               inputs=[x, gs.Constant(unique_name(graph, f"{node.name}_flat_shape"),
                                                      np.array([-1, k_in], np.int64))],
                               outputs=[flat]))
    gemm_out = gs.Variable(unique_name(graph, f"{node.name}_flat_out"), dtype=x.dtype)
    gemm_inputs[0] = flat
    graph.nodes.append(gs.Node("Gemm", node.name, attrs={"transB": 1}, inputs=gemm_inputs,
                               outputs=[gemm_out]))
    lead = gs.Variable(unique_name(graph, f"{node.name}_lead_shape"), dtype=np.int64)
    graph.nodes.append(gs.Node("Shape", unique_name(graph, f"{node.name}_shape"), attrs={"end": -1},
                               inputs=[x], outputs=[lead]))
    target = gs.Variable(unique_name(graph, f"{node.name}_out_shape"), dtype=np.int64)
    graph.nodes.append(gs.Node("Concat", unique_name(graph, f"{node.name}_concat"), attrs={"axis": 0},
                               inputs=[lead, gs.Constant(unique_name(graph, f"{node.name}_n"),
                                                         np.array([n_out], np.int64))],
                               outputs=[target]))
    graph.nodes.append(gs.Node("Reshape", unique_name(graph, f"{node.name}_unflatten"),
                               inputs=[gemm_out, target], outputs=[result]))


def loaded(constant: gs.Constant) -> np.ndarray:
    """The constant's values, without graphsurgeon keeping the loaded copy in the constant (a second copy of
    every weight that a rewrite replaces, alive until the old constant is collected)."""
    values = constant._values
    return values.load() if isinstance(values, LazyValues) else values


def _bias_add_after(graph: gs.Graph, out: gs.Variable, n_out: int):
    """If `out` feeds only an Add of a constant vector of length n_out, return (bias, Add output)."""
    if len(out.outputs) != 1 or out in graph.outputs:
        return None, out
    add = out.outputs[0]
    if add.op != "Add":
        return None, out
    other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    if not isinstance(other, gs.Constant):
        return None, out
    values = other.values
    if values.size != n_out or (values.ndim > 0 and values.shape[-1] != n_out):
        return None, out
    result = add.outputs[0]
    add.outputs.clear()
    return values.reshape(n_out).copy(), result
