"""Turn auto_pad into explicit pads on Conv and pooling nodes (the relevance graph needs them)."""
from __future__ import annotations

import math

import numpy as np

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


def fold_pad_into_conv(graph: gs.Graph) -> gs.Graph:
    """A zero Pad on the spatial axes whose only reader is a Conv becomes the Conv's own pads."""
    for pad in list(graph.nodes):
        if pad.op != "Pad" or len(pad.outputs[0].outputs) != 1 or pad.outputs[0] in graph.outputs:
            continue
        conv = pad.outputs[0].outputs[0]
        if conv.op != "Conv" or conv.inputs[0] is not pad.outputs[0]:
            continue
        mode = pad.attrs.get("mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        pads = pad.inputs[1] if len(pad.inputs) > 1 else None
        value = pad.inputs[2] if len(pad.inputs) > 2 and pad.inputs[2].name else None
        if mode != "constant" or not isinstance(pads, gs.Constant) or len(pad.inputs) > 3:
            continue
        if value is not None and (not isinstance(value, gs.Constant) or np.any(value.values != 0)):
            continue
        pads = [int(p) for p in pads.values]
        rank = len(pads) // 2
        begins, ends = pads[:rank], pads[rank:]
        if any(p < 0 for p in pads) or begins[:2] != [0, 0] or ends[:2] != [0, 0]:
            continue
        nd = rank - 2
        current = list(conv.attrs.get("pads", [0] * (2 * nd)))
        conv.attrs["pads"] = [current[i] + begins[2 + i] for i in range(nd)] + [
            current[nd + i] + ends[2 + i] for i in range(nd)]
        conv.inputs[0] = pad.inputs[0]
        pad.outputs.clear()
    graph.cleanup(remove_unused_graph_inputs=False)
    return graph
