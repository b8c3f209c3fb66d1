"""The relevance compiler: canonical forward graph in, forward + relevance graph out.

It walks the forward graph from the logits back to the explained input; for every node on that path
it asks the node's op handler (onnxlrp.ops) for relevance nodes, and sums the relevance a tensor
receives from all its consumers (fan-out). The result is one ONNX model: the forward nodes, the
relevance nodes, and the rule-transformed weights as initialisers.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto, helper

from . import __version__
from . import composites as composites_module
from .canonical import CanonicalModel, canonicalize
from .contrastive import contrastive_relevance
from .canonical.batch import BATCH_DIM
from .conditions import ConceptLayers
from .composites import Composite, Layer
from .errors import UnsupportedModelError, UnsupportedOpError
from .fanout import factor_fanout_products
from .graph import ForwardGraph
from .model import is_large, load_model, save_model
from .zero_relevance import ZeroRelevance
from .ops import WEIGHTED, handler_for
from .ops.context import Builder, NodeContext
from .output_relevance import build_output_relevance
from .ops.linear_map import linear_map
from .rules import Norm, Pass, Rule

LAYER_SUM_PREFIX = "lrp_sum/"
LAYER_ABS_SUM_PREFIX = "lrp_abs/"  # the sum of |R| beside each sum: the share of negative relevance
LAYER_RELEVANCE_PREFIX = "lrp_relevance/"  # the whole relevance tensor at a layer's input


@dataclass
class CompiledExplainer:
    model: onnx.ModelProto
    inputs: list[str]              # the model's own inputs, in order
    target_input: str | None       # None in custom mode
    custom_input: str | None       # the output-relevance input in custom mode
    output_names: list[str]        # the model's own outputs, in order
    relevance_outputs: dict[str, str]  # explained input -> relevance output
    target_output: str | None
    logits: str
    n_classes: int
    layer_rules: list[tuple[str, str, str]] = field(default_factory=list)  # (node, op, rule)
    layer_sum_outputs: list[str] = field(default_factory=list)
    layer_relevance_outputs: list[str] = field(default_factory=list)  # output, layers top-down, inputs
    condition_inputs: dict[str, str] = field(default_factory=dict)    # layer name -> its mask input (CRP)
    concept_outputs: dict[str, tuple] = field(default_factory=dict)   # layer name -> (per-channel R, sum |R|)
    score_output: str | None = None   # the explained value per sample, where the model has no classes (OC-SVM)
    start_shape: tuple = ()        # the explained tensor's shape without the batch axis ((n_classes,) for logits)
    position_input: str | None = None   # sequence outputs (transformer composites): the position explained
    position_output: str | None = None


def layers_on_path(fwd: ForwardGraph, path_nodes: list[onnx.NodeProto], primary: str | None = None) -> list[Layer]:
    """Weighted layers in execution order, except that the first layer fed by the primary input comes
    first: it is the "first layer" of the Flat and Box composites."""
    weighted = [n for n in path_nodes if n.op_type in WEIGHTED]
    if primary is not None:
        reached = fwd.descendants([primary])
        first = next((n for n in weighted if any(i in reached for i in n.input)), None)
        if first is not None:
            weighted = [first] + [n for n in weighted if n is not first]
    conv_count = 0
    layers = []
    for index, node in enumerate(weighted):
        kind = WEIGHTED[node.op_type]
        layers.append(Layer(name=node.name, op_type=node.op_type, kind=kind, index=index, count=len(weighted),
                            conv_index=conv_count if kind == "conv" else None))
        conv_count += kind == "conv"
    return layers


def _assign_rules(composite: Composite, fwd: ForwardGraph, path_nodes,
                  primary: str | None = None) -> tuple[dict[str, Rule], list[Layer]]:
    layers = layers_on_path(fwd, path_nodes, primary)
    if hasattr(composite, "prepare"):
        composite.prepare(layers)
    rules = {layer.name: composite.rule_for(layer) for layer in layers}
    for node in path_nodes:
        if node.name not in rules:
            declared = composite.rule_for_op(node.op_type, node.name)
            if declared is not None:
                rules[node.name] = declared
    return rules, layers


def _name_nodes(model: onnx.ModelProto) -> None:
    """Every node gets a unique name: rules are keyed and relevance nodes are named by it."""
    seen = set()
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)


def relevance_inputs(fwd: ForwardGraph, node: onnx.NodeProto, live: set[str]) -> list[str]:
    """The inputs of `node` that relevance flows back into: computed float tensors, except a gate."""
    gate = fwd.gate_operand(node, live)
    return [name for i, name in enumerate(node.input)
            if name in live and i != gate and fwd.elem_type(name) in (TensorProto.FLOAT, None)]


def path_nodes_of(fwd: ForwardGraph, sources: list[str], logits: str) -> list[onnx.NodeProto]:
    """Nodes that relevance passes through on its way from the logits to the explained inputs, in
    execution order. Shape computations and the gate branches of gated products are not on it."""
    live = fwd.descendants(sources)
    carries = {logits}
    path = []
    for node in reversed(fwd.nodes):
        if any(o in carries for o in node.output if o) and any(i in live for i in node.input if i):
            path.append(node)
            carries.update(relevance_inputs(fwd, node, live))
    path.reverse()
    return path


def explained_inputs(fwd: ForwardGraph, inputs: list[str] | None = None) -> list[str]:
    """Every float input gets relevance; the first named (else the first float input) is the primary one."""
    float_inputs = [name for name in fwd.input_names if fwd.elem_type(name) == TensorProto.FLOAT]
    if not inputs:
        return float_inputs
    return list(inputs) + [name for name in float_inputs if name not in inputs]


def compile_explainer(model, composite: Composite | str | None = None, mode: str = "logit",
                      output: int | str | None = None, inputs: list[str] | None = None,
                      layer_sums: bool = False, layer_relevances: bool = False,
                      conditions: list[str] | None = None, concepts: list[str] | None = None) -> CompiledExplainer:
    """Build the explainer model in memory. `model`: a path or an onnx.ModelProto.

    layer_sums: also output sum(R) and sum(|R|) per sample at every weighted layer's input.
    layer_relevances: also output the whole relevance tensor at every weighted layer's input.
    conditions: layers (node or tensor names) whose relevance is masked to chosen channels (CRP): the
        model takes a [batch, channels] 0/1 mask per layer (onnxlrp.conditions).
    concepts: layers whose concept relevance per channel is output.
    """
    composite = composites_module.get(composite)
    if getattr(composite, "gradient_form", False):   # AttnLRP / CP-LRP: onnxlrp.gradient
        from .gradient import compile_gradient_explainer
        return compile_gradient_explainer(model, composite, mode=mode, output=output, inputs=inputs,
                                          layer_relevances=layer_relevances, conditions=conditions,
                                          concepts=concepts)
    proto = load_model(model, check=not isinstance(model, onnx.ModelProto))   # a proto: checked by its caller
    from .oneclass import compile_oneclass_explainer, find_one_class_svm
    if find_one_class_svm(proto) is not None:   # a one-class SVM: OC-DTD (onnxlrp/oneclass.py)
        return compile_oneclass_explainer(proto, mode)
    canonical: CanonicalModel = canonicalize(proto, output)
    _refuse_control_flow(canonical.model)
    _name_nodes(canonical.model)
    fwd = ForwardGraph(canonical.model)

    explained = explained_inputs(fwd, inputs)
    if not explained:
        raise UnsupportedModelError("the model has no float32 input to explain (for token ids, a transformer: "
                                    "composite attn_lrp or cp_lrp)")
    for name in explained:
        if name not in fwd.input_names:
            raise UnsupportedModelError(f"the model has no input '{name}'; its inputs are {fwd.input_names}")
    logits = canonical.logits
    logits_shape = fwd.shape(logits)
    if fwd.elem_type(logits) != TensorProto.FLOAT:
        raise UnsupportedModelError(f"the logits '{logits}' are not float32; onnxlrp explains float32 models")
    # custom and select modes may start anywhere (any output shape, dynamic dims included)
    if logits_shape is None:
        raise UnsupportedModelError(f"the rank of the output '{logits}' is unknown after shape inference")
    if mode not in ("custom", "select") and not is_classifier(logits_shape):
        raise UnsupportedModelError(f"the output '{logits}' has shape {list(logits_shape)}; class modes explain "
                                    "[batch, classes] (or [batch, classes, 1, ...]) logits with a fixed number of "
                                    "classes; for other outputs select what to explain (region=, box=, direction=: "
                                    "mode 'select') or give the start relevance (mode 'custom')")
    live = fwd.descendants(explained)
    if logits not in live:
        raise UnsupportedModelError(f"the logits '{logits}' do not depend on the input(s) {explained}")

    explained = [name for name in explained if logits in fwd.descendants([name])] or explained
    path = path_nodes_of(fwd, explained, logits)
    rules, layers = _assign_rules(composite, fwd, path, explained[0])

    b = Builder()
    taken = {v.name for v in list(canonical.model.graph.input) + list(canonical.model.graph.output)}
    start, extra_inputs, extra_outputs = build_output_relevance(b, logits, list(logits_shape[1:]), mode, taken)

    forward_nodes = [_copy(n) for n in fwd.nodes]
    by_name = {n.name: n for n in forward_nodes}
    contrastive_layer = None
    if mode == "contrastive":
        contrastive_layer = fwd.producer.get(logits)
        if contrastive_layer is None or contrastive_layer.op_type != "Gemm" or logits_shape[1] < 2:
            found = contrastive_layer.op_type if contrastive_layer is not None else "a graph input"
            raise UnsupportedModelError(f"mode 'contrastive' needs a dense layer (Gemm/MatMul) right under the "
                                        f"logits '{logits}' and at least two classes; here they come from {found}")
    zeros = ZeroRelevance(fwd, path, rules, logits, live)
    crp = ConceptLayers(fwd, path, conditions, concepts, last_axis_for_rank3=False)
    extra_inputs += crp.inputs
    received: dict[str, list[str]] = {logits: [start]} if start else {}
    sum_outputs, layer_relevance = [], []   # top-down
    for node in reversed(path):
        relevance_out = [_gather(b, received.pop(o, None), node.name) if o else None for o in node.output]
        relevance_out = crp.apply(b, node, relevance_out, received)
        contrastive = node is contrastive_layer
        if not contrastive and not any(relevance_out):
            continue
        rule = rules.get(node.name)
        b.set_scope(node.name)
        ctx = NodeContext(node=by_name[node.name], graph=fwd, b=b, rule=rule, relevance_out=relevance_out,
                          live=[bool(i) and i in live for i in node.input],
                          only_where_positive=not contrastive and zeros.only_where_positive(node),
                          relu_of_output=zeros.relu_of(node))
        if contrastive:  # the relevance starts here, on the pairwise difference layer
            sent, start = contrastive_relevance(ctx, extra_outputs[0].name, int(logits_shape[1]))
        else:
            sent = _handler(node, rule)(ctx)
        for name, relevance in zip(node.input, sent):
            if relevance is not None and name in live:
                received.setdefault(name, []).append(relevance)
        if layer_sums and node.op_type in WEIGHTED:
            sum_outputs.append(_layer_sum(b, sent[0], node.name))
        if layer_relevances and node.op_type in WEIGHTED:
            layer_relevance.append((node.name, sent[0], node.input[0]))

    relevance_outputs = {}
    graph_outputs = [_with_dynamic_batch(v) for v in canonical.model.graph.output]
    for name in explained:
        b.set_scope(f"relevance/{name}")
        final = _gather(b, received.get(name), name)
        out_name = f"relevance_{name}"
        if final is None:
            final = b.op("Mul", [name, b.scalar(0.0)])
        b.nodes.append(helper.make_node("Identity", [final], [out_name], name=f"lrp/output/{out_name}"))
        shape = fwd.shape(name)
        graph_outputs.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT,
                                                           [BATCH_DIM] + list(shape[1:])))
        relevance_outputs[name] = out_name
    if layer_sums:
        b.set_scope("relevance/sums")
        sum_outputs.reverse()
        sum_outputs.insert(0, _layer_sum(b, start, "output"))
        for name in explained:
            sum_outputs.append(_layer_sum(b, relevance_outputs[name], f"input/{name}"))
        for name in sum_outputs:
            graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [BATCH_DIM]))
        for name in sum_outputs:
            graph_outputs.append(helper.make_tensor_value_info(abs_sum_name(name), TensorProto.FLOAT, [BATCH_DIM]))
    relevance_outputs_by_layer = []
    if layer_relevances:
        first = [("output", start, logits)] + layer_relevance
        last = [(f"input/{name}", relevance_outputs[name], name) for name in explained]
        for label, relevance, forward_tensor in first + last:
            name = f"{LAYER_RELEVANCE_PREFIX}{label}"
            b.nodes.append(helper.make_node("Identity", [relevance], [name], name=f"lrp/{name}"))
            shape = fwd.shape(forward_tensor)
            dims = [BATCH_DIM] + list(shape[1:]) if shape else None
            graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
            relevance_outputs_by_layer.append(name)
    graph_outputs.extend(extra_outputs)
    graph_outputs.extend(crp.outputs)

    relevance_nodes = factor_fanout_products(b.nodes, keep={v.name for v in graph_outputs})
    explainer = _explainer_model(canonical.model, forward_nodes + relevance_nodes,
                                 [_with_dynamic_batch(v) for v in canonical.model.graph.input] + extra_inputs,
                                 graph_outputs, b.initializers)
    layer_rules = [(layer.name, layer.op_type, repr(rules[layer.name])) for layer in layers]
    target_input = extra_inputs[0].name if mode not in ("custom", "select") else None
    compiled = CompiledExplainer(
        model=explainer, inputs=list(fwd.input_names), target_input=target_input,
        custom_input=extra_inputs[0].name if mode in ("custom", "select") else None,
        output_names=canonical.output_names, relevance_outputs=relevance_outputs,
        target_output=extra_outputs[0].name if extra_outputs else None, logits=logits,
        n_classes=int(logits_shape[1]) if len(logits_shape) > 1 and logits_shape[1] else 0,
        start_shape=tuple(logits_shape[1:]),
        layer_rules=layer_rules, layer_sum_outputs=sum_outputs if layer_sums else [],
        layer_relevance_outputs=relevance_outputs_by_layer, condition_inputs=crp.condition_inputs,
        concept_outputs=crp.concept_outputs)
    _write_metadata(compiled, composite, mode)
    return compiled


def is_classifier(shape) -> bool:
    """[batch, classes] or [batch, classes, 1, ...] with a known number of classes."""
    return len(shape) >= 2 and shape[1] is not None and all(d == 1 for d in shape[2:])


def _explainer_model(canonical: onnx.ModelProto, nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    """The explainer, built inside the canonical model (which only the compiler holds): its weights stay
    where they are instead of being copied twice more (make_graph, make_model), seconds for a VGG-16."""
    graph = canonical.graph
    del graph.node[:], graph.input[:], graph.output[:], graph.value_info[:]
    graph.node.extend(nodes)
    graph.input.extend(inputs)
    graph.output.extend(outputs)
    graph.initializer.extend(initializers)
    graph.name, graph.doc_string = "onnxlrp_explainer", ""
    for field in ("metadata_props", "doc_string", "domain", "model_version", "training_info", "functions"):
        canonical.ClearField(field)
    canonical.producer_name, canonical.producer_version = "onnxlrp", __version__
    return canonical


def _handler(node: onnx.NodeProto, rule: Rule | None):
    """The op's registered handler, else the treatment the composite declared for it, else a clear error."""
    handler = handler_for(node.op_type)
    if handler is None and isinstance(rule, Pass):
        handler = _declared_pass
    elif handler is None and isinstance(rule, Norm):
        handler = _declared_linear_map
    if handler is None or node.domain not in ("", "ai.onnx"):
        domain = f" from domain '{node.domain}'" if node.domain not in ("", "ai.onnx") else ""
        raise UnsupportedOpError(node.op_type, node.name, f"no relevance handler{domain}")
    return handler


def _refuse_control_flow(model: onnx.ModelProto) -> None:
    """An If whose condition folds to a constant has been inlined by now; what is left depends on the input."""
    for node in model.graph.node:
        if node.op_type in ("If", "Loop", "Scan"):
            raise UnsupportedOpError(node.op_type, node.name or "?", "control flow that depends on the input cannot "
                                     "be explained; export the model with the branch or loop unrolled for a fixed input")


def _declared_pass(ctx: NodeContext):
    """An op declared Pass by the composite: relevance goes to its first input unchanged."""
    x_shape, y_shape = ctx.shape(ctx.x()), ctx.shape(ctx.y())
    if x_shape != y_shape:
        raise UnsupportedOpError(ctx.node.op_type, ctx.name, f"declared Pass, but its output shape {y_shape} differs "
                                 f"from its input shape {x_shape}")
    return [ctx.R()] + [None] * (len(ctx.node.input) - 1)


def _declared_linear_map(ctx: NodeContext):
    """An op declared Norm by the composite: a linear map, its Jacobian probed at compile time."""
    return linear_map(ctx, ctx.rule.stabilizer)


def _gather(b: Builder, parts: list[str] | None, scope: str) -> str | None:
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    b.set_scope(f"{scope}/fanout")
    return b.op("Sum", parts)


def abs_sum_name(sum_name: str) -> str:
    return LAYER_ABS_SUM_PREFIX + sum_name[len(LAYER_SUM_PREFIX):]


def _layer_sum(b: Builder, relevance: str, label: str) -> str:
    """Per sample: sum(R) as lrp_sum/<label> and sum(|R|) as lrp_abs/<label>."""
    name = f"{LAYER_SUM_PREFIX}{label}"
    flat = b.op("Flatten", [relevance], axis=1)
    b.nodes.append(helper.make_node("ReduceSum", [flat, b.ints([1])], [name], keepdims=0, name=f"lrp/{name}"))
    b.nodes.append(helper.make_node("ReduceSum", [b.op("Abs", [flat]), b.ints([1])], [abs_sum_name(name)],
                                    keepdims=0, name=f"lrp/{abs_sum_name(name)}"))
    return name


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def _with_dynamic_batch(value: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(value)
    dims = copy.type.tensor_type.shape.dim
    if len(dims) and not dims[0].dim_param:
        dims[0].Clear()
        dims[0].dim_param = BATCH_DIM
    return copy


def _write_metadata(compiled: CompiledExplainer, composite, mode: str) -> None:
    info = {
        "onnxlrp_version": __version__, "composite": repr(composite), "mode": mode,
        "inputs": compiled.inputs, "target_input": compiled.target_input, "custom_input": compiled.custom_input,
        "outputs": compiled.output_names, "relevance_outputs": compiled.relevance_outputs,
        "target_output": compiled.target_output, "logits": compiled.logits,
        "layer_sum_outputs": compiled.layer_sum_outputs, "layer_relevance_outputs": compiled.layer_relevance_outputs,
        "condition_inputs": compiled.condition_inputs, "concept_outputs": compiled.concept_outputs,
    }
    entry = compiled.model.metadata_props.add()
    entry.key, entry.value = "onnxlrp", json.dumps(info)


def compile(model, output_path: str | os.PathLike, composite: Composite | str | None = None, mode: str = "logit",
            output: int | str | None = None, check: bool = True, external_data: bool | None = None, **options):
    """Compile `model` into an explainer model written atomically to `output_path`.

    The input model file is only read. Returns the path written. external_data: the weights in
    `<output>.data` beside it (default: only for models over 2 GB); onnxruntime then maps them into
    memory instead of copying them out of the file, which lowers a session's peak memory.
    """
    model = load_model(model)   # files and protos alike are checked once, here
    compiled = compile_explainer(model, composite=composite, mode=mode, output=output, **options)
    if check:
        check_explainer(compiled.model)
    return save_model(compiled.model, output_path, external_data=external_data)


def check_explainer(model: onnx.ModelProto) -> None:
    if not is_large(model):
        onnx.checker.check_model(model, full_check=True)
    else:
        onnx.checker.check_model(model)


__all__ = ["compile", "compile_explainer", "CompiledExplainer", "check_explainer"]
