"""Turn auto_pad into explicit pads on Conv and pooling nodes (the relevance graph needs them)."""
from __future__ import annotations

import math

import onnx_graphsurgeon as gs

from ..errors import UnsupportedModelError

PADDED_OPS = ("Conv", "MaxPool", "AveragePool", "LpPool")


def explicit_pads(graph: gs.Graph) -> gs.Graph:
    for node in graph.nodes:
        if node.op not in PADDED_OPS:
            continue
        auto_pad = node.attrs.get("auto_pad", "NOTSET")
        if isinstance(auto_pad, bytes):
            auto_pad = auto_pad.decode()
        if auto_pad in ("NOTSET", ""):
            continue
        shape = node.inputs[0].shape
        spatial = list(shape[2:]) if shape is not None else []
        kernel = node.attrs.get("kernel_shape")
        if kernel is None and node.op == "Conv" and isinstance(node.inputs[1], gs.Constant):
            kernel = list(node.inputs[1].values.shape[2:])
        if not spatial or any(not isinstance(d, int) for d in spatial) or kernel is None:
            raise UnsupportedModelError(
                f"node '{node.name}' ({node.op}) uses auto_pad={auto_pad} on an input of unknown spatial "
                "size; give the model a fixed input height/width"
            )
        strides = node.attrs.get("strides", [1] * len(kernel))
        dilations = node.attrs.get("dilations", [1] * len(kernel))
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            if auto_pad == "VALID":
                begins.append(0)
                ends.append(0)
                continue
            out = math.ceil(size / s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            if auto_pad == "SAME_UPPER":
                begins.append(small)
                ends.append(large)
            else:
                begins.append(large)
                ends.append(small)
        node.attrs["pads"] = begins + ends
        node.attrs.pop("auto_pad", None)
    return graph
