"""Fold BatchNormalization into the Conv or Gemm right before it (Zennit's SequentialMergeBatchNorm).

W' = W * gamma / sqrt(var + eps),  b' = (b - mean) * gamma / sqrt(var + eps) + beta.
A BatchNormalization with no such layer before it stays in the graph and passes relevance through.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .names import unique_name


def fold_batchnorm(graph: gs.Graph) -> bool:
    """True if any BatchNormalization was folded."""
    folded = [_fold_into_producer(graph, node) for node in list(graph.nodes) if node.op == "BatchNormalization"]
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return any(folded)


def _fold_into_producer(graph: gs.Graph, bn: gs.Node) -> bool:
    x = bn.inputs[0]
    if not x.inputs or len(x.outputs) != 1 or x in graph.outputs:
        return False
    layer = x.inputs[0]
    if layer.op not in ("Conv", "Gemm") or not all(isinstance(t, gs.Constant) for t in bn.inputs[1:5]):
        return False
    if not isinstance(layer.inputs[1], gs.Constant):
        return False
    if layer.op == "Gemm" and int(layer.attrs.get("transB", 0)) != 1:
        return False  # dense layers are normalised to transB=1 before this pass
    if len(bn.outputs) > 1 and any(t.outputs for t in bn.outputs[1:]):
        return False  # training-mode statistics are used
    gamma, beta, mean, var = (t.values.astype(np.float64) for t in bn.inputs[1:5])
    eps = float(bn.attrs.get("epsilon", 1e-5))
    scale = gamma / np.sqrt(var + eps)
    weight = layer.inputs[1].values
    n_out = weight.shape[0]
    has_bias = len(layer.inputs) > 2 and isinstance(layer.inputs[2], gs.Constant)
    bias = layer.inputs[2].values.astype(np.float64) if has_bias else np.zeros(n_out)
    bias = np.broadcast_to(bias.reshape(-1) if bias.size == n_out else bias, (n_out,))
    new_weight = weight.astype(np.float64) * scale.reshape((n_out,) + (1,) * (weight.ndim - 1))
    new_bias = (bias - mean) * scale + beta
    dtype = weight.dtype
    inputs = [layer.inputs[0],
              gs.Constant(unique_name(graph, f"{layer.name}_W_bn"), new_weight.astype(dtype)),
              gs.Constant(unique_name(graph, f"{layer.name}_b_bn"), new_bias.astype(dtype))]
    layer.inputs = inputs
    layer.outputs = [bn.outputs[0]]
    bn.outputs.clear()
    return True
