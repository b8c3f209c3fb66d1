"""Fresh, deterministic tensor and node names for graph rewrites."""
from __future__ import annotations

import onnx_graphsurgeon as gs


def unique_name(graph: gs.Graph, base: str) -> str:
    taken = graph.__dict__.setdefault("_onnxlrp_names", None)
    if taken is None:
        taken = set(graph.tensors().keys()) | {n.name for n in graph.nodes}
        graph._onnxlrp_names = taken
    name, k = base, 1
    while name in taken:
        name = f"{base}_{k}"
        k += 1
    taken.add(name)
    return name
