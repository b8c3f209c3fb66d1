"""Shape inference on a weightless skeleton of the model (strict, with data propagation)."""
from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

from .quantized import SPAN_DOMAIN


def exported(graph: gs.Graph, ir_version: int) -> onnx.ModelProto:
    """A rewritten graph as a model of the given IR version, without the value_info the rewrites made stale.

    The weights go in one at a time: graphsurgeon's export holds every weight three times over (a list of
    tensors, the graph, the model), which for a model of GBs made most of a compile's peak memory."""
    weights = {name: tensor for name, tensor in graph.tensors().items()
               if isinstance(tensor, gs.Constant) and not isinstance(tensor._values, SparseValues)
               and tensor._values.nbytes > _INLINE_BYTES}
    held = {name: tensor._values for name, tensor in weights.items()}
    try:
        for tensor in weights.values():
            tensor._values = _PLACEHOLDER
        model = gs.export_onnx(graph, do_type_check=False)
    finally:
        for name, tensor in weights.items():
            tensor._values = held[name]
    written = {}
    for slot in model.graph.initializer:
        tensor = weights.get(slot.name)
        if tensor is not None:
            slot.CopyFrom(OnnxExporter.export_tensor_proto(tensor))
            tensor._values = LazyValues(slot)   # the graph reads the exported copy: a rewritten weight's array is freed
            written[slot.name] = slot
    for subgraph in _nested(model.graph):   # a branch that reads an outer weight holds a copy of it
        for slot in subgraph.initializer:
            if slot.name in written and list(slot.dims) == [0]:
                slot.CopyFrom(written[slot.name])
    model.ir_version = ir_version
    del model.graph.value_info[:]
    return model


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a node holds in its attributes: If's branches, Loop's and Scan's bodies."""
    return [graph for attribute in node.attribute
            for graph in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs)]


def outer_reads(node: onnx.NodeProto) -> set[str]:
    """The names a node's subgraphs read from outside them (outer-scope values)."""
    names: set[str] = set()
    for graph in subgraphs(node):
        defined = _defined(graph)
        for inner in graph.node:
            names.update(name for name in inner.input if name and name not in defined)
            names.update(outer_reads(inner) - defined)
    return names


def rename_outer_reads(node: onnx.NodeProto, renamed: dict[str, str]) -> None:
    """Where the node's subgraphs read an outer-scope value named in `renamed`, they read the new name."""
    for graph in subgraphs(node):
        defined = _defined(graph)
        visible = {old: new for old, new in renamed.items() if old not in defined}
        for inner in graph.node:
            for k, name in enumerate(inner.input):
                if name in visible:
                    inner.input[k] = visible[name]
            rename_outer_reads(inner, visible)


def _defined(graph: onnx.GraphProto) -> set[str]:
    return ({v.name for v in graph.input} | {t.name for t in graph.initializer}
            | {o for node in graph.node for o in node.output if o})


def _nested(graph: onnx.GraphProto):
    for node in graph.node:
        for subgraph in subgraphs(node):
            yield subgraph
            yield from _nested(subgraph)


_INLINE_BYTES = 4096   # weights up to this size go through graphsurgeon's export as they are
_PLACEHOLDER = np.zeros(0, np.float32)


def symbolic_dims(model: onnx.ModelProto) -> dict[str, list]:
    """Every tensor's dims (ints, or names for symbolic ones) as onnxruntime's symbolic shape inference finds
    them (on the model without its weights' bytes): it follows an export's computed reshapes, where ONNX's own
    inference leaves dims unknown. {} where it fails."""
    try:   # imported here: it needs sympy, a dependency that an install without dependencies may lack
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
        # SymbolicShapeInference.infer_shapes's own steps, but for its last one: where some shape stays unknown it
        # writes the model to sym_shape_infer_temp.onnx in the current folder (the user's) and raises
        inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
        inference._preprocess(without_weights(model))
        complete = False
        while inference.run_:
            complete = inference._infer_impl()
        inference._update_output_from_vi()
        inferred = inference.out_mp_
    except Exception:  # noqa: BLE001 - sympy missing, an op it does not know: no dims, callers do without
        return {}
    if not complete or inferred is None:
        return {}
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
            for v in values if v.type.tensor_type.HasField("shape")}


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
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    # an exporter's types for what inference cannot derive (outputs of ops of other domains); the others it
    # derives itself, and an exporter's stale entry (onnxruntime-genai writes some) would contradict it
    foreign = {o for node in model.graph.node if node.domain not in ("", "ai.onnx") for o in node.output}
    typed = {v.name for v in model.graph.value_info if v.name in foreign}
    graph.value_info.extend(v for v in model.graph.value_info if v.name in foreign)
    types = {t.name: (t.data_type, tuple(t.dims)) for t in model.graph.initializer}
    functions = {(f.domain, f.name): f for f in model.functions if f.domain == SPAN_DOMAIN}
    nodes = list(model.graph.node)
    while nodes:
        node = nodes.pop(0)
        stand_in = STAND_INS.get((node.domain, node.op_type))
        if (node.domain, node.op_type) in functions:   # a quantized span: its body, which may hold contrib ops
            nodes[:0] = _inlined(node, functions[(node.domain, node.op_type)])
        elif stand_in is not None and not typed.issuperset(o for o in node.output if o):
            graph.node.extend(stand_in(node, graph, types))
        else:
            graph.node.append(node)
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


def _matmul_nbits(node: onnx.NodeProto, graph: onnx.GraphProto, types: dict) -> list[onnx.NodeProto]:
    """MatMulNBits(A, packed B, ...): A [..., K] times a [K, N] weight."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    weight = f"{node.name or node.output[0]}/shape_only_weight"
    graph.input.append(onnx.helper.make_tensor_value_info(weight, onnx.TensorProto.FLOAT, [attrs["K"], attrs["N"]]))
    return [onnx.helper.make_node("MatMul", [node.input[0], weight], [node.output[0]])]


def _gather_block_quantized(node: onnx.NodeProto, graph: onnx.GraphProto, types: dict) -> list[onnx.NodeProto]:
    """GatherBlockQuantized(table, indices, scales, ...): rows of the dequantized table (of the scales' type),
    whose quantized axis holds 8 / bits values a byte where the table is uint8."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    table_type, dims = types[node.input[0]]
    dims = list(dims)
    axis = attrs.get("quantize_axis", 1) % len(dims)
    if table_type == onnx.TensorProto.UINT8:
        dims[axis] = dims[axis] * 8 // attrs.get("bits", 4)
    rows = f"{node.name or node.output[0]}/shape_only_table"
    graph.input.append(onnx.helper.make_tensor_value_info(rows, types[node.input[2]][0], dims))
    return [onnx.helper.make_node("Gather", [rows, node.input[1]], [node.output[0]], axis=attrs.get("gather_axis", 0))]


def _inlined(call: onnx.NodeProto, function: onnx.FunctionProto) -> list[onnx.NodeProto]:
    """The function's nodes with its formal names replaced by the call's, its inner names made unique."""
    names = dict(zip(function.input, call.input)) | dict(zip(function.output, call.output))
    prefix = f"{call.name or call.output[0]}/"
    nodes = []
    for inner in function.node:
        node = onnx.NodeProto()
        node.CopyFrom(inner)
        for names_of in (node.input, node.output):
            for k, name in enumerate(names_of):
                if name:
                    names_of[k] = names.get(name, prefix + name)
        nodes.append(node)
    return nodes


def _qlinear_add(node: onnx.NodeProto, graph: onnx.GraphProto, types: dict) -> list[onnx.NodeProto]:
    """QLinearAdd(a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero): broadcast like Add, integers."""
    return [onnx.helper.make_node("Add", [node.input[0], node.input[3]], [node.output[0]])]


# Ops of other domains that onnx's shape inference does not know, as default-domain ops of the same output
# type and shape, used where the model does not say its output types
STAND_INS = {("com.microsoft", "MatMulNBits"): _matmul_nbits,
             ("com.microsoft", "GatherBlockQuantized"): _gather_block_quantized,
             ("com.microsoft", "QLinearAdd"): _qlinear_add}
