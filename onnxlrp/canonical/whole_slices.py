"""Slices that keep the whole tensor, read as the tensor itself (for the bounded-memory explainer).

torch's exports cut each layer's attention mask to the key length: mask[:, :, :, :keys]. Without a cache the
key length is the mask's own width, so the Slice keeps everything, but onnxruntime copies it all the same: one
more [seq, seq] tensor per layer in the forward, and again where the relevance pass recomputes the layer.
onnxruntime's symbolic shape inference shows such a Slice: its output has its input's dims, the same sizes or
the same symbols (it proved that the ends reach past the dims), and with every step 1 that is the whole input.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def skip_whole_slices(model: onnx.ModelProto, dims: dict[str, list]) -> onnx.ModelProto:
    """The model with the readers of every whole Slice (the module's docstring) reading its input instead, and
    the Slice gone; `dims`: canonical.shapes.symbolic_dims of the model. A Slice that writes a graph output
    stays (the output keeps its name)."""
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    replaced: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "Slice" or node.output[0] in outputs:
            continue
        before, after = dims.get(node.input[0]), dims.get(node.output[0])
        if before is None or before != after or any(d is None or d == "" for d in before):
            continue
        steps = node.input[4] if len(node.input) > 4 else ""
        if steps and (steps not in constants or not np.all(numpy_helper.to_array(constants[steps]) == 1)):
            continue
        replaced[node.output[0]] = node.input[0]
    if not replaced:
        return model
    kept = [node for node in graph.node if not (node.op_type == "Slice" and node.output[0] in replaced)]

    def source(name: str) -> str:   # through a chain of whole slices
        while name in replaced:
            name = replaced[name]
        return name
    for node in kept:
        node.input[:] = [source(name) for name in node.input]
    del graph.node[:]
    graph.node.extend(kept)
    return model
