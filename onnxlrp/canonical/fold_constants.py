"""Constant folding: every subgraph that does not depend on a graph input becomes an initialiser.

This turns Constant nodes, weight preprocessing and static shape arithmetic into plain constants, so
that the later rewrites and the op handlers can read weights as numpy arrays.
"""
from __future__ import annotations

import onnx_graphsurgeon as gs
import onnxruntime as ort


def fold_constants(graph: gs.Graph) -> gs.Graph:
    ort.set_default_logger_severity(3)  # graphsurgeon evaluates with onnxruntime; its optimiser notes are noise
    graph.fold_constants(fold_shapes=True, error_ok=True)
    graph.cleanup(remove_unused_graph_inputs=False)
    return graph
