"""The explainer model: the forward nodes, the relevance nodes and their initialisers, with the model's inputs
(plus the start's: target, position, masks) and outputs (plus one relevance tensor per explained input, the
class explained and, when asked for, per-layer sums and tensors); what it computes, described for the
runtime (CompiledExplainer) and in the model's `onnxlrp` metadata entry."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto, helper

from .. import __version__
from ..canonical.batch import BATCH_DIM
from ..canonical.shapes import outer_reads
from ..ops.context import Builder

LAYER_SUM_PREFIX = "lrp_sum/"
LAYER_ABS_SUM_PREFIX = "lrp_abs/"  # the sum of |R| beside each sum: the share of negative relevance
LAYER_RELEVANCE_PREFIX = "lrp_relevance/"  # the whole relevance tensor at a layer's input


@dataclass
class CompiledExplainer:
    model: onnx.ModelProto
    inputs: list[str]              # the model's own inputs, in order
    target_input: str | None       # None in custom and select modes
    custom_input: str | None       # the output-relevance (custom) or mask (select) input
    output_names: list[str]        # the model's own outputs, in order
    relevance_outputs: dict[str, str]  # explained input -> relevance output
    target_output: str | None
    logits: str
    n_classes: int
    layer_rules: list[tuple[str, str, str]] = field(default_factory=list)  # (node, op, "kind: rule")
    layer_sum_outputs: list[str] = field(default_factory=list)
    layer_relevance_outputs: list[str] = field(default_factory=list)  # output, layers top-down, inputs
    condition_inputs: dict[str, str] = field(default_factory=dict)    # layer name -> its mask input (CRP)
    concept_outputs: dict[str, tuple] = field(default_factory=dict)   # layer name -> (per-channel R, sum |R|)
    score_output: str | None = None   # the explained value per sample, where the model has no classes (OC-SVM)
    start_shape: tuple = ()        # the explained tensor's shape without the batch axis ((n_classes,) for logits)
    position_input: str | None = None   # sequence outputs: the position explained
    position_output: str | None = None
    batch: int | None = None       # None: any batch; else the batch size the model is fixed to (fed in chunks)
    memory: str = "default"        # "low": forward tensors recomputed in the relevance pass (recompute.py)


def abs_sum_name(sum_name: str) -> str:
    return LAYER_ABS_SUM_PREFIX + sum_name[len(LAYER_SUM_PREFIX):]


def layer_sum(b: Builder, relevance: str, label: str) -> str:
    """Per sample: sum(R) as lrp_sum/<label> and sum(|R|) as lrp_abs/<label>."""
    name = f"{LAYER_SUM_PREFIX}{label}"
    flat = b.op("Flatten", [relevance], axis=1)
    b.nodes.append(helper.make_node("ReduceSum", [flat, b.ints([1])], [name], keepdims=0, name=f"lrp/{name}"))
    b.nodes.append(helper.make_node("ReduceSum", [b.op("Abs", [flat]), b.ints([1])], [abs_sum_name(name)],
                                    keepdims=0, name=f"lrp/{abs_sum_name(name)}"))
    return name


def graph_output(b: Builder, tensor: str, name: str, dims) -> onnx.ValueInfoProto:
    """`tensor` as the graph output `name` (float, [batch, dims...]; dims None: rank unknown)."""
    b.nodes.append(helper.make_node("Identity", [tensor], [name], name=f"lrp/output/{name}"))
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def sample_dims(shape, name: str) -> list | None:
    """[batch, d1, ...] for a value_info, a free dim named after the tensor; None if the rank is unknown."""
    if shape is None:
        return None
    batch = shape[0] if shape and shape[0] is not None else BATCH_DIM   # a model fixed to its exported batch
    return [batch] + [d if d is not None else f"{name}_dim{k + 1}" for k, d in enumerate(shape[1:])]


def with_dynamic_batch(value: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(value)
    dims = copy.type.tensor_type.shape.dim
    if len(dims) and not dims[0].dim_param:
        dims[0].Clear()
        dims[0].dim_param = BATCH_DIM
    return copy


def live_nodes(nodes: list, outputs: set[str]) -> list:
    """The nodes something in `outputs` is computed from, in their order. onnxruntime runs a node nothing
    reads all the same, and one left at the end of BERT's explainer kept 500 MB more alive at batch 8."""
    needed, kept = set(outputs), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
            needed.update(outer_reads(node))
    return kept[::-1]


def explainer_model(canonical: onnx.ModelProto, nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    """The explainer, built inside the canonical model (which only the compiler holds): its weights stay
    where they are instead of being copied twice more (make_graph, make_model), seconds for a VGG-16."""
    graph = canonical.graph
    del graph.node[:], graph.input[:], graph.output[:], graph.value_info[:]
    graph.node.extend(live_nodes(nodes, {o.name for o in outputs}))
    graph.input.extend(inputs)
    graph.output.extend(outputs)
    graph.initializer.extend(initializers)
    graph.name, graph.doc_string = "onnxlrp_explainer", ""
    for name in ("metadata_props", "doc_string", "domain", "model_version", "training_info"):
        canonical.ClearField(name)
    called = {(node.domain, node.op_type) for node in graph.node}   # e.g. quantized spans (canonical/quantized.py)
    kept = [f for f in canonical.functions if (f.domain, f.name) in called]
    del canonical.functions[:]
    canonical.functions.extend(kept)
    canonical.producer_name, canonical.producer_version = "onnxlrp", __version__
    return canonical


def write_metadata(compiled: CompiledExplainer, composite, mode: str) -> None:
    info = {
        "onnxlrp_version": __version__, "composite": repr(composite), "mode": mode,
        "inputs": compiled.inputs, "target_input": compiled.target_input, "custom_input": compiled.custom_input,
        "outputs": compiled.output_names, "relevance_outputs": compiled.relevance_outputs,
        "target_output": compiled.target_output, "logits": compiled.logits,
        "position_input": compiled.position_input, "position_output": compiled.position_output,
        "layer_sum_outputs": compiled.layer_sum_outputs, "layer_relevance_outputs": compiled.layer_relevance_outputs,
        "condition_inputs": compiled.condition_inputs, "concept_outputs": compiled.concept_outputs,
        "memory": compiled.memory,
    }
    entry = compiled.model.metadata_props.add()
    entry.key, entry.value = "onnxlrp", json.dumps(info)
