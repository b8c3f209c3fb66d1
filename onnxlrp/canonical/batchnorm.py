"""Fold BatchNormalization into the Conv or Gemm right before it (Zennit's SequentialMergeBatchNorm).

W' = W * gamma / sqrt(var + eps),  b' = (b - mean) * gamma / sqrt(var + eps) + beta.
A BatchNormalization with no such layer before it stays in the graph and passes relevance through.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .affine import LAYER_OPS, scale_after, weights_constant


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
    if layer.op not in LAYER_OPS or not weights_constant(layer):
        return False
    if not all(isinstance(t, gs.Constant) for t in bn.inputs[1:5]):
        return False
    if len(bn.outputs) > 1 and any(t.outputs for t in bn.outputs[1:]):
        return False  # training-mode statistics are used
    gamma, beta, mean, var = (t.values.astype(np.float64) for t in bn.inputs[1:5])
    scale = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    scale_after(graph, layer, bn, scale, beta - mean * scale, "bn")
    return True
