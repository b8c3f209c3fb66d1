"""Remove Identity and inference-time Dropout nodes, which only copy their input."""
from __future__ import annotations

import onnx_graphsurgeon as gs

COPY_OPS = ("Identity", "Dropout")


def remove_identities(graph: gs.Graph) -> gs.Graph:
    output_tensors = set(id(t) for t in graph.outputs)
    for node in list(graph.nodes):
        if node.op not in COPY_OPS:
            continue
        if node.op == "Dropout" and len(node.outputs) > 1 and node.outputs[1].outputs:
            continue  # the mask is used: not a plain copy
        source, result = node.inputs[0], node.outputs[0]
        if id(result) in output_tensors:
            continue  # keep graph output names stable
        for consumer in list(result.outputs):
            for i, tensor in enumerate(consumer.inputs):
                if tensor is result:
                    consumer.inputs[i] = source
        node.outputs.clear()
    graph.cleanup(remove_unused_graph_inputs=False)
    return graph
