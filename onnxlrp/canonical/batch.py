"""Give every graph input and output a dynamic leading batch dimension, where the model allows it.

Exporters often bake batch size 1 into the model: into the input shape, and into the target shape of a
Reshape ([1, -1] to flatten, torch.onnx's dynamo exporter into every Reshape). Batching servers need a dynamic
batch, so where a Reshape's data carries the batch on its leading axis, the leading entry of its target is
rewritten to "copy the batch" (0, or -1 under allowzero=1, where 0 means an empty axis, or the batch read at
run time where the target has a -1 already). A Reshape whose leading entry is not the batch is left alone.

Some graphs fold the batch into other axes (a transformer exported with static shapes reshapes [1 * heads,
seq, d]); no rewrite of leading entries makes those batch-free. The rewritten model is therefore checked at
batch 2 (strict shape inference, and every Reshape keeping its element count); if it fails, the model keeps
its exported batch size, and the explainer takes batches of that size (the runtime feeds it in chunks).
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .shapes import ShapeInferenceError, infer_shapes, without_weights

BATCH_DIM = "batch"


def make_batch_dynamic(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int | None]:
    """(the model, None where its batch is now dynamic, else the batch size it keeps)."""
    graph = model.graph
    init_names = {init.name for init in graph.initializer}
    shapes = [value.type.tensor_type.shape for value in list(graph.input) + list(graph.output)
              if value.name not in init_names and value.type.HasField("tensor_type")]
    shapes = [shape for shape in shapes if len(shape.dim)]
    _name_batch(shapes)
    static_batches = {shape.dim[0].dim_value for shape in shapes if shape.dim[0].HasField("dim_value")}
    if not static_batches:
        for shape in shapes:
            if not shape.dim[0].dim_param:
                shape.dim[0].dim_param = BATCH_DIM
        return model, None
    saved = [(shape.dim[0].dim_value, shape.dim[0].dim_param) for shape in shapes]
    for shape in shapes:
        shape.dim[0].Clear()
        shape.dim[0].dim_param = BATCH_DIM
    del graph.value_info[:]   # shapes inferred for a fixed batch would now contradict the inputs
    rewrites = _rewrite_reshape_batch(model, static_batches)
    if _works_at_batch(model, 2):
        return model, None
    for node, original in rewrites:   # back to the exported batch
        node.input[1] = original
    for shape, (value, param) in zip(shapes, saved):
        shape.dim[0].Clear()
        if param:
            shape.dim[0].dim_param = param
        else:
            shape.dim[0].dim_value = value
    return model, max(static_batches)


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


def _constant_values(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    values = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = node.attribute[0].t
    return values


def _leading_is_batch(inferred: dict, data: str) -> bool:
    value = inferred.get(data)
    if value is None or not value.type.tensor_type.HasField("shape"):
        return False
    dims = value.type.tensor_type.shape.dim
    return len(dims) > 0 and dims[0].dim_param == BATCH_DIM


def _rewrite_reshape_batch(model: onnx.ModelProto, static_batches: set[int]) -> list[tuple]:
    """Rewrite the leading entry of the Reshapes whose data carries the batch; (node, original target) each."""
    try:
        inferred_model = onnx.shape_inference.infer_shapes(without_weights(model), data_prop=True)
    except Exception:  # noqa: BLE001 - without shapes no Reshape is known to carry the batch
        return []
    inferred = {v.name: v for v in list(inferred_model.graph.input) + list(inferred_model.graph.value_info)}
    constants = _constant_values(model)
    rewrites = []
    for k, node in enumerate(model.graph.node):
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        target = numpy_helper.to_array(constants[node.input[1]])
        if target.ndim != 1 or target.size < 2 or int(target[0]) not in static_batches:
            continue
        if not _leading_is_batch(inferred, node.input[0]):
            continue
        allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
        new_target = target.astype(np.int64).copy()
        if not allowzero:
            new_target[0] = 0
        elif -1 not in new_target[1:]:
            new_target[0] = -1
        else:
            rewrites.append((node, node.input[1]))
            node.input[1] = _batch_from_data(model, node, target, k)
            continue
        name = f"{node.input[1]}__dynamic_batch_{k}"
        model.graph.initializer.append(numpy_helper.from_array(new_target, name))
        rewrites.append((node, node.input[1]))
        node.input[1] = name
    return rewrites


def _batch_from_data(model: onnx.ModelProto, node: onnx.NodeProto, target: np.ndarray, k: int) -> str:
    """Concat(Shape(data)[0:1], target[1:]): the batch read at run time."""
    prefix = f"{node.name or 'reshape'}_{k}/dynamic_batch"
    rest = numpy_helper.from_array(target[1:].astype(np.int64), f"{prefix}/rest")
    model.graph.initializer.append(rest)
    batch = helper.make_node("Shape", [node.input[0]], [f"{prefix}/batch"], start=0, end=1, name=f"{prefix}/shape")
    shape = helper.make_node("Concat", [batch.output[0], rest.name], [f"{prefix}/target"], axis=0,
                             name=f"{prefix}/concat")
    position = list(model.graph.node).index(node)
    model.graph.node.insert(position, shape)
    model.graph.node.insert(position, batch)
    return shape.output[0]


def _works_at_batch(model: onnx.ModelProto, batch: int) -> bool:
    """Does the model, its inputs fixed at this batch, pass strict shape inference with every Reshape keeping
    its element count?"""
    probe = onnx.ModelProto()
    probe.CopyFrom(without_weights(model))
    for value in probe.graph.input:
        dims = value.type.tensor_type.shape.dim
        if len(dims) and dims[0].dim_param == BATCH_DIM:
            dims[0].Clear()
            dims[0].dim_value = batch
    for value in probe.graph.output:
        dims = value.type.tensor_type.shape.dim
        if len(dims) and dims[0].dim_param == BATCH_DIM:
            dims[0].Clear()
    try:
        infer_shapes(probe)
    except ShapeInferenceError:
        return False
    shapes = {v.name: v.type.tensor_type.shape for v in list(probe.graph.input) + list(probe.graph.value_info)
              + list(probe.graph.output) if v.type.tensor_type.HasField("shape")}
    for node in probe.graph.node:
        if node.op_type != "Reshape":
            continue
        sizes = [_static_size(shapes.get(name)) for name in (node.input[0], node.output[0])]
        if None not in sizes and sizes[0] != sizes[1]:
            return False
    return True


def _static_size(shape) -> int | None:
    if shape is None or any(not d.HasField("dim_value") for d in shape.dim):
        return None
    return math.prod(d.dim_value for d in shape.dim)
