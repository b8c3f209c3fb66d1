"""Graph rewrites that bring any exported model into the canonical form the compiler expects.

Each rewrite is one module; `canonicalize` runs them in order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import onnx
import onnx_graphsurgeon as gs

from ..errors import UnsupportedModelError
from .affine import fold_affine
from .batch import make_batch_dynamic
from .batchnorm import fold_batchnorm
from .defuse import defuse_contrib_ops
from .dense import normalise_dense
from .fold_constants import fold_constants
from .identity import remove_identities
from .logits import find_logits
from .pads import explicit_pads, fold_pad_into_conv
from .versions import normalise_versions


@dataclass
class CanonicalModel:
    model: onnx.ModelProto  # canonical graph with inferred shapes
    logits: str             # name of the tensor the explanation starts from
    output_names: list[str]  # the original model's outputs, in order


def canonicalize(model: onnx.ModelProto, output: int | str | None = None) -> CanonicalModel:
    output_names = [o.name for o in model.graph.output]
    model = defuse_contrib_ops(model)
    model = normalise_versions(model)
    model = make_batch_dynamic(model)
    model = fold_until_stable(model)
    graph = gs.import_onnx(model)
    remove_identities(graph)
    explicit_pads(graph)
    fold_pad_into_conv(graph)
    normalise_dense(graph)
    fold_affine(graph)
    if fold_batchnorm(graph):
        fold_affine(graph)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    model = infer_shapes(_export(graph, model.ir_version))
    return CanonicalModel(model=model, logits=find_logits(model, output), output_names=output_names)


def fold_until_stable(model: onnx.ModelProto, rounds: int = 32) -> onnx.ModelProto:
    """Constant folding and shape inference feed each other: a folded shape computation gives a static
    shape, which lets the next round fold more (torch's computed reshapes, an If on a tensor's rank)."""
    for _ in range(rounds):
        model = infer_shapes(model)
        graph = gs.import_onnx(model)
        before = len(graph.nodes)
        fold_constants(graph)
        if len(graph.nodes) == before:
            return model      # nothing folded: no export (a copy of every weight)
        model = _export(graph, model.ir_version)
    return infer_shapes(model)


def _export(graph: gs.Graph, ir_version: int) -> onnx.ModelProto:
    """The graph as a model of the given IR version, without the value_info the rewrites made stale."""
    model = gs.export_onnx(graph, do_type_check=False)
    model.ir_version = ir_version
    del model.graph.value_info[:]
    return model


# Initialisers with more elements than this go through shape inference as typed graph inputs, without
# their bytes: serialising a VGG-16's half gigabyte of weights for every round would dominate the compile
# time. (Counted from the dims: even ByteSize() costs a pass over the bytes.)
_SHAPE_ONLY_ELEMENTS = 1024


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with inferred value_info and output types (the same object, updated in place)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(_without_weights(model), check_type=True, strict_mode=True,
                                                     data_prop=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(f"shape inference failed on the model: {first}") from None
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    for output, typed in zip(model.graph.output, inferred.graph.output):
        output.type.CopyFrom(typed.type)
    return model


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose large initialisers are typed graph inputs: the same shapes to infer, none of
    the bytes to copy (small ones stay, shape inference reads their values)."""
    graph = onnx.GraphProto(name=model.graph.name)
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)   # an exporter's types for what inference cannot derive
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
