"""Shape inference on a weightless skeleton of the model (strict, with data propagation)."""
from __future__ import annotations

import math

import onnx


class ShapeInferenceError(Exception):
    """onnx's strict shape inference refused the graph (the first line of what it said)."""


# Initialisers with more elements than this go through shape inference as typed graph inputs, without
# their bytes: serialising a VGG-16's half gigabyte of weights for every round would dominate the compile
# time. (Counted from the dims: even ByteSize() costs a pass over the bytes.)
_SHAPE_ONLY_ELEMENTS = 1024


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with inferred value_info and output types (the same object, updated in place); a
    ShapeInferenceError where onnx refuses it."""
    try:
        inferred = onnx.shape_inference.infer_shapes(without_weights(model), check_type=True, strict_mode=True,
                                                     data_prop=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ShapeInferenceError(first) from None
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    for output, typed in zip(model.graph.output, inferred.graph.output):
        output.type.CopyFrom(typed.type)
    return model


def without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose large initialisers are typed graph inputs: the same shapes to infer, none of
    the bytes to copy (small ones stay, shape inference reads their values)."""
    graph = onnx.GraphProto(name=model.graph.name)
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    # an exporter's types for what inference cannot derive (outputs of ops of other domains); the others it
    # derives itself, and an exporter's stale entry (onnxruntime-genai writes some) would contradict it
    foreign = {o for node in model.graph.node if node.domain not in ("", "ai.onnx") for o in node.output}
    graph.value_info.extend(v for v in model.graph.value_info if v.name in foreign)
    graph.sparse_initializer.extend(model.graph.sparse_initializer)
    listed = {value.name for value in model.graph.input}
    for tensor in model.graph.initializer:
        if math.prod(tensor.dims) <= _SHAPE_ONLY_ELEMENTS:
            graph.initializer.append(tensor)
        elif tensor.name not in listed:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    skeleton = onnx.ModelProto(ir_version=model.ir_version, graph=graph)
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    return skeleton
