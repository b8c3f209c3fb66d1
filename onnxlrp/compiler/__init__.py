"""The compiler: any ONNX model in, its explainer model out (forward graph + relevance graph).

    load -> (one-class SVM: onnxlrp/oneclass.py) -> canonicalize (onnxlrp/canonical/) -> analyse
    (analysis.py: sources, held constants, path, kinds, rules) -> start (start.py) -> walk (walk.py: every
    node on the path by its op family, onnxlrp/ops/) -> assemble (assemble.py)

Every composite compiles through the same walk; whether a node propagates relevance R or LXT's modified
gradient g (R = t * g) is the walk's choice per node, from its family, its rule and the composite's form.
"""
from __future__ import annotations

import os

import onnx
import onnxruntime as ort

from .. import composites as composites_module
from ..canonical import canonicalize
from ..canonical.batch import BATCH_DIM
from ..composites import Composite
from ..conditions import ConceptLayers
from ..contrastive import contrastive_relevance
from ..errors import OnnxLrpError, UnsupportedModelError, UnsupportedOpError
from ..fanout import factor_fanout_products
from ..graph import ForwardGraph
from ..model import is_large, load_model, save_model
from ..oneclass import compile_oneclass_explainer, find_one_class_svm
from ..validate import structure_only, validate
from ..ops.context import Builder
from .analysis import analyse, cache_axes, explained_sources
from .assemble import (LAYER_RELEVANCE_PREFIX, LAYER_SUM_PREFIX, CompiledExplainer, abs_sum_name,
                       explainer_model, graph_output, layer_sum, sample_dims, with_dynamic_batch, write_metadata)
from .output_layer import output_layers_as_matmul
from .query_chunks import QUERY_CHUNK
from .row import compute_on_row
from .recompute import (checkpoints, dims_signatures, everything_but_norm_statistics, norm_inputs_after_heads,
                        recompute_forward)
from .signals import RELEVANCE, convert, gather
from .start import MODES, build_start
from .walk import Walk


def compile_explainer(model, composite: Composite | str | None = None, mode: str = "logit",
                      output: int | str | None = None, inputs: str | list[str] | None = None,
                      layer_sums: bool = False, layer_relevances: bool = False,
                      conditions: list[str] | None = None, concepts: list[str] | None = None,
                      support: tuple[int, int, int] | None = None, memory: str = "default") -> CompiledExplainer:
    """Build the explainer model in memory. `model`: a path or an onnx.ModelProto.

    output: the model output explained (a name or an index; default the first float output).
    inputs: the input(s) explained, a name or a list (default: token ids, else every float input).
    layer_sums: also output sum(R) and sum(|R|) per sample at every weighted layer's input.
    layer_relevances: also output the whole relevance tensor at every weighted layer's input and at each
        explained tensor (for token ids: at the embedding rows).
    conditions: layers (node or tensor names) whose relevance is masked to chosen channels (CRP): the
        model takes a [batch, channels] 0/1 mask per layer (onnxlrp.conditions).
    concepts: layers whose concept relevance per channel is output.
    support: (axis, start, stop) of the explained output outside which the start is zero (select mode: a
        detection's class scores); a branch that only feeds the rest (the boxes) carries nothing and needs no
        rule.
    memory: "default", or "low": the relevance pass recomputes the forward tensors it reads from checkpoints at
        the residual joins instead of keeping them (compiler/recompute.py).
    """
    if memory not in MEMORY_FORMS:
        raise ValueError(f"unknown memory form '{memory}'; choose one of {', '.join(MEMORY_FORMS)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
    composite = composites_module.get(composite)
    proto = load_model(model, check=not isinstance(model, onnx.ModelProto))   # a proto: checked by its caller
    if find_one_class_svm(proto) is not None:   # a one-class SVM: OC-DTD (onnxlrp/oneclass.py)
        return compile_oneclass_explainer(proto, mode)
    handed = [proto]   # canonicalize's alone, so that its memory goes once the first rewrite has copied it
    del proto
    canonical = canonicalize(handed, output, split_heads=memory == "low")
    _refuse_control_flow(canonical.model)
    _name_nodes(canonical.model)
    fwd = ForwardGraph(canonical.model)
    opset = next((o.version for o in canonical.model.opset_import if o.domain in ("", "ai.onnx")), 17)

    logits = canonical.logits
    shape = fwd.shape(logits)
    if shape is None or fwd.elem_type(logits) != onnx.TensorProto.FLOAT:
        raise UnsupportedModelError(f"the output '{logits}' is not a float32 tensor of known rank; onnxlrp explains "
                                    "float32 models")
    sources = explained_sources(fwd, inputs)
    named = [inputs] if isinstance(inputs, str) else list(inputs or [])
    reaching = {name: tensors for name, tensors in sources.items() if logits in fwd.descendants(tensors)}
    if not reaching:
        raise UnsupportedModelError(f"the output '{logits}' does not depend on the input(s) {list(sources)}")
    # the inputs named, and of the others those the output depends on
    sources = {name: tensors for name, tensors in sources.items() if name in named or name in reaching}
    analysis = analyse(fwd, sources, logits, composite)

    b = Builder()
    taken = {v.name for v in list(canonical.model.graph.input) + list(canonical.model.graph.output)}
    start = build_start(b, logits, shape, mode, taken)
    contrastive = None
    if mode == "contrastive":
        layer = fwd.producer.get(logits)
        if layer is None or layer.op_type != "Gemm" or start.n_classes < 2:
            found = layer.op_type if layer is not None else "a graph input"
            raise UnsupportedModelError(f"mode 'contrastive' needs a dense layer (Gemm/MatMul) right under the "
                                        f"logits '{logits}' and at least two classes; here they come from {found}")
        contrastive = (layer, lambda ctx: contrastive_relevance(ctx, start.target_output, start.n_classes))
    crp = ConceptLayers(fwd, analysis.path, conditions, concepts)
    forward_nodes = [_copy(n) for n in fwd.nodes]
    walk = Walk(b, analysis, composite, {n.name: n for n in forward_nodes}, crp, opset, contrastive,
                record_layers=layer_sums or layer_relevances, batch_fixed=canonical.batch is not None,
                support=support, attentions=canonical.attentions,
                query_chunk=QUERY_CHUNK if memory == "low" else None)
    walked = walk.run(start.signal)

    batched = with_dynamic_batch if canonical.batch is None else (lambda value: value)
    graph_outputs = [batched(v) for v in canonical.model.graph.output]
    relevance_outputs, at_sources = {}, []
    caches = cache_axes(fwd)
    for name, tensors in sources.items():
        b.set_scope(f"relevance/{name}")
        parts = []
        for tensor in tensors:
            signal = gather(b, walked.received.get(tensor), tensor, tensor)
            relevance = convert(b, signal, tensor, RELEVANCE) if signal else b.op("Mul", [tensor, b.scalar(0.0)])
            at_sources.append((f"input/{tensor}", relevance, tensor))
            if tensor != name:  # token ids: each token's relevance is the sum over its embedding row
                relevance = b.op("ReduceSum", [relevance, b.ints([-1])], keepdims=0)
                relevance = b.op("Reshape", [relevance, b.op("Shape", [name])])
            parts.append(relevance)
        dims = sample_dims(fwd.shape(name), name)
        if name in caches:   # a past key or value: per cached position, summed over heads and the head axis
            rank = len(fwd.shape(name))
            parts = [b.op("ReduceSum", [parts[0], b.ints([a for a in range(1, rank) if a != caches[name]])],
                          keepdims=0)]
            dims = [dims[0], dims[caches[name]]]
        relevance_outputs[name] = f"relevance_{name}"
        graph_outputs.append(graph_output(b, b.add_all(parts), relevance_outputs[name], dims))

    b.set_scope("relevance/layers")
    start_relevance = walked.start_relevance or convert(b, start.signal, logits, RELEVANCE)
    layers = [("output", start_relevance, logits)] + walked.layer_inputs + at_sources   # unused ones are pruned
    sum_outputs, layer_relevance_outputs = [], []
    if layer_sums:
        sum_outputs = [layer_sum(b, relevance, label) for label, relevance, _ in layers]
        graph_outputs += [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [BATCH_DIM])
                          for name in sum_outputs + [abs_sum_name(n) for n in sum_outputs]]
    if layer_relevances:
        for label, relevance, tensor in layers:
            name = f"{LAYER_RELEVANCE_PREFIX}{label}"
            graph_outputs.append(graph_output(b, relevance, name, sample_dims(fwd.shape(tensor), tensor)))
            layer_relevance_outputs.append(name)
    graph_outputs += start.outputs + crp.outputs

    relevance_nodes = b.nodes
    if start.row is not None:
        relevance_nodes = compute_on_row(relevance_nodes, start.row, b, fwd.shape)
    relevance_nodes = factor_fanout_products(relevance_nodes, keep={v.name for v in graph_outputs})
    if memory == "low":
        kept = checkpoints(fwd, analysis, {v.name for v in canonical.model.graph.output})
        kept |= norm_inputs_after_heads(fwd, analysis, kept, {c.output for c in walk.chunked_heads.values()})
    else:
        kept = everything_but_norm_statistics(fwd, analysis, forward_nodes)
    relevance_nodes = recompute_forward(forward_nodes, relevance_nodes, kept, b,
                                        lambda name: fwd.elem_type(name) == onnx.TensorProto.FLOAT, logits,
                                        dims_signatures(fwd, canonical.model, memory))
    nodes = output_layers_as_matmul(forward_nodes + relevance_nodes, {v.name for v in canonical.model.graph.output},
                                    canonical.model.graph.initializer)
    explainer = explainer_model(canonical.model, nodes,
                                [batched(v) for v in canonical.model.graph.input] + start.inputs
                                + crp.inputs, graph_outputs, b.initializers)
    compiled = CompiledExplainer(
        model=explainer, inputs=list(fwd.input_names), target_input=start.target_input,
        custom_input=start.custom_input, output_names=canonical.output_names, relevance_outputs=relevance_outputs,
        target_output=start.target_output, logits=logits, n_classes=start.n_classes, start_shape=tuple(shape[1:]),
        layer_rules=[(layer.name, layer.op_type, f"{layer.kind}: {rule!r}") for layer, rule in analysis.layers],
        layer_sum_outputs=sum_outputs, layer_relevance_outputs=layer_relevance_outputs,
        position_input=start.position_input, position_output=start.position_output,
        condition_inputs=crp.condition_inputs, concept_outputs=crp.concept_outputs, batch=canonical.batch,
        memory=memory)
    write_metadata(compiled, composite, mode)
    return compiled


MEMORY_FORMS = ("default", "low")


def _name_nodes(model: onnx.ModelProto) -> None:
    """Every node gets a unique name: rules are keyed and relevance nodes are named by it."""
    seen = set()
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)


def _refuse_control_flow(model: onnx.ModelProto) -> None:
    """An If whose condition folds to a constant has been inlined by now; what is left depends on the input."""
    for node in model.graph.node:
        if node.op_type in ("If", "Loop", "Scan"):
            raise UnsupportedOpError(node.op_type, node.name or "?", "control flow that depends on the input cannot "
                                     "be explained; export the model with the branch or loop unrolled for a fixed input")


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def compile(model, output_path: str | os.PathLike, composite: Composite | str | None = None, mode: str = "logit",
            output: int | str | None = None, check: bool = True, external_data: bool | None = None, **options):
    """Compile `model` into an explainer model written atomically to `output_path`.

    The input model file is only read. Returns the path written. external_data: the weights in
    `<output>.data` beside it (default: only for models over 2 GB); onnxruntime then maps them into
    memory instead of copying them out of the file, which lowers a session's peak memory.
    """
    if isinstance(model, onnx.ModelProto):
        validate(model)   # a file is checked as compile_explainer loads it (one copy of the weights, not two)
    compiled = compile_explainer(model, composite=composite, mode=mode, output=output, **options)
    if check:
        check_explainer(compiled.model)
    return save_model(compiled.model, output_path, external_data=external_data)


def check_explainer(model: onnx.ModelProto) -> None:
    """The explainer is a valid ONNX model that onnxruntime loads; anything else is a bug of onnxlrp's, said in
    one line with the node concerned."""
    try:
        if is_large(model):   # onnx's checker refuses a protobuf over 2 GiB in memory
            onnx.checker.check_model(structure_only(model))
        else:
            onnx.checker.check_model(model, full_check=True)
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            options.log_severity_level = 3
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - whatever the checker or onnxruntime say, it is ours to fix
        raise rejected_explainer(exc) from None


def rejected_explainer(exc: Exception) -> OnnxLrpError:
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return OnnxLrpError(f"onnxlrp built an explainer that onnxruntime or the ONNX checker rejects, a bug in onnxlrp "
                        f"(please report it with the model): {first[:400]}")


__all__ = ["compile", "compile_explainer", "CompiledExplainer", "MEMORY_FORMS", "check_explainer", "rejected_explainer",
           "abs_sum_name", "LAYER_SUM_PREFIX", "LAYER_RELEVANCE_PREFIX"]
