"""Give every graph input and output a dynamic leading batch dimension.

Exporters often bake batch size 1 into the model, both in the input shape and in the target shape of
a flattening Reshape ([1, -1]). Batching servers need a dynamic batch, so the batch entry of such
Reshape targets is rewritten to 0 ("copy from the input"), which is exact for any batch size.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

BATCH_DIM = "batch"


def make_batch_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    init_names = {init.name for init in graph.initializer}
    shapes = [value.type.tensor_type.shape for value in list(graph.input) + list(graph.output)
              if value.name not in init_names and value.type.HasField("tensor_type")]
    shapes = [shape for shape in shapes if len(shape.dim)]
    _name_batch(shapes)
    static_batches = set()
    for shape in shapes:
        dim0 = shape.dim[0]
        if dim0.HasField("dim_value"):
            static_batches.add(dim0.dim_value)
            dim0.Clear()
            dim0.dim_param = BATCH_DIM
        elif not dim0.dim_param:
            dim0.dim_param = BATCH_DIM
    if static_batches:
        _rewrite_reshape_batch(model, static_batches)
    # shapes inferred for a fixed batch would now contradict the inputs
    del graph.value_info[:]
    return model


def _name_batch(shapes) -> None:
    """Where every input and output calls its batch by one name (e.g. "N"), call it BATCH_DIM, which is the
    name the explainer's own inputs (the target) use: shape inference then sees that they agree."""
    names = {shape.dim[0].dim_param for shape in shapes if shape.dim[0].dim_param}
    elsewhere = {d.dim_param for shape in shapes for d in shape.dim[1:] if d.dim_param}
    if len(names) != 1 or names & elsewhere:
        return
    for shape in shapes:
        if shape.dim[0].dim_param:
            shape.dim[0].dim_param = BATCH_DIM


def _rewrite_reshape_batch(model: onnx.ModelProto, static_batches: set[int]) -> None:
    inits = {init.name: init for init in model.graph.initializer}
    consts = {}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        tensor = inits.get(node.input[1]) or consts.get(node.input[1])
        if tensor is None:
            continue
        target = numpy_helper.to_array(tensor)
        if target.ndim != 1 or target.size < 2 or int(target[0]) not in static_batches:
            continue
        new_target = target.copy()
        new_target[0] = 0
        # a shape tensor may be shared with other nodes: give this Reshape its own copy
        name = f"{node.input[1]}__dynamic_batch"
        if name not in inits:
            new_init = numpy_helper.from_array(np.asarray(new_target, dtype=np.int64), name)
            model.graph.initializer.append(new_init)
            inits[name] = new_init
        node.input[1] = name
