"""The modified-gradient compiler (AttnLRP, CP-LRP): canonical forward graph in, forward + gradient graph
out, with R = t * g at each explained tensor t.

It walks the forward graph from the explained output back to the explained tensors (float inputs, or the
embedding rows gathered for integer token ids); every node on the way gets its op's modified VJP
(onnxlrp.gradient handlers), a non-linearity block the identity rule, and a tensor read by several nodes
the sum of their gradients. Only tensors that depend on an explained input, and are not held constant,
carry gradient: attention masks, position ids and shapes never do.
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from ..canonical import canonicalize
from ..canonical.batch import BATCH_DIM
from ..conditions import ConceptLayers
from ..errors import UnsupportedModelError, UnsupportedOpError
from ..graph import ForwardGraph
from ..model import load_model
from ..ops.context import Builder
from . import arithmetic, linear, nonlinear, norm, routing, softmax  # noqa: F401  (registration)
from .context import GradContext
from .defuse import defuse_contrib_ops
from .nonlinear import identity_rule
from .patterns import FLOAT_TYPES, analyse
from .registry import vjp_for
from .start import build_seed

TOKEN_INPUT_NAMES = ("input_ids", "input", "ids", "tokens")


def explained_sources(fwd: ForwardGraph, inputs: list[str] | None) -> dict[str, list[str]]:
    """Explained input -> the tensors whose relevance it gets: a float input itself; an integer input
    (token ids) the outputs of the Gathers that read embedding rows with it."""
    names = list(inputs) if inputs else _default_inputs(fwd)
    sources = {}
    for name in names:
        if name not in fwd.input_names:
            raise UnsupportedModelError(f"the model has no input '{name}'; its inputs are {fwd.input_names}")
        if fwd.elem_type(name) in FLOAT_TYPES:
            sources[name] = [name]
            continue
        gathers = [node.output[0] for node in fwd.nodes if node.op_type == "Gather" and len(node.input) == 2
                   and _reads(fwd, node.input[1], name) and fwd.const(node.input[0]) is not None]
        if not gathers:
            raise UnsupportedModelError(f"the integer input '{name}' reads no embedding table (a Gather of constant "
                                        "rows); only float inputs and token ids can be explained")
        sources[name] = gathers
    return sources


def _reads(fwd: ForwardGraph, tensor: str, name: str) -> bool:
    """Is `tensor` the input `name`, or a Cast or reshaping of it?"""
    while tensor != name:
        node = fwd.producer.get(tensor)
        if node is None or node.op_type not in ("Cast", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            return False
        tensor = node.input[0]
    return True


def _default_inputs(fwd: ForwardGraph) -> list[str]:
    """Float inputs if there are any (pixels, embeddings), else the token ids."""
    floats = [n for n in fwd.input_names if fwd.elem_type(n) in FLOAT_TYPES]
    if floats:
        return floats
    named = [n for n in fwd.input_names if n.lower() in TOKEN_INPUT_NAMES]
    if named:
        return named[:1]
    return fwd.input_names[:1]


def compile_gradient_explainer(model, composite, mode: str = "logit", output=None, inputs=None,
                               layer_relevances: bool = False, conditions=None, concepts=None):
    from ..compiler import CompiledExplainer, _copy, _explainer_model, _gather, _name_nodes, _refuse_control_flow, \
        _with_dynamic_batch, _write_metadata, LAYER_RELEVANCE_PREFIX

    proto = defuse_contrib_ops(load_model(model, check=not isinstance(model, onnx.ModelProto)))
    canonical = canonicalize(proto, output, layer_rewrites=False)
    _refuse_control_flow(canonical.model)
    _refuse_other_domains(canonical.model)
    _name_nodes(canonical.model)
    fwd = ForwardGraph(canonical.model)
    opset = next((o.version for o in canonical.model.opset_import if o.domain in ("", "ai.onnx")), 17)

    sources = explained_sources(fwd, inputs)
    all_sources = [t for ts in sources.values() for t in ts]
    analysis = analyse(fwd, all_sources, composite.rule_for)
    logits = canonical.logits
    shape = fwd.shape(logits)
    if shape is None or fwd.elem_type(logits) != TensorProto.FLOAT:
        raise UnsupportedModelError(f"the output '{logits}' is not a float32 tensor of known rank")
    if logits not in analysis.live:
        raise UnsupportedModelError(f"the output '{logits}' does not depend on the input(s) {list(sources)}")

    b = Builder()
    taken = {v.name for v in list(canonical.model.graph.input) + list(canonical.model.graph.output)}
    seed, extra_inputs, extra_outputs, position, kind = build_seed(b, logits, shape, mode, taken)

    crp = ConceptLayers(fwd, [n for n in fwd.nodes if n.output and n.output[0] in analysis.live], conditions,
                        concepts, last_axis_for_rank3=True)
    extra_inputs += crp.inputs
    forward_nodes = [_copy(n) for n in fwd.nodes]
    by_name = {n.name: n for n in forward_nodes}
    received: dict[str, list[str]] = {logits: [seed]}
    for node in reversed(fwd.nodes):
        g_out = [_gather(b, received.get(o) if o in all_sources else received.pop(o, None), node.name)
                 if o else None for o in node.output]
        if not any(g_out):
            continue
        g_out = crp.apply(b, node, g_out, received, to_relevance=lambda t, g: b.op("Mul", [t, g]))
        carries = [bool(i) and i in analysis.live and i not in analysis.detached for i in node.input]
        if not any(carries):
            continue
        b.set_scope(node.name)
        ctx = GradContext(node=by_name[node.name], graph=fwd, b=b, g_out=g_out, carries=carries,
                          analysis=analysis, opset=opset, extra={"composite": composite})
        root = analysis.blocks.get(node.output[0])
        if root is not None:
            received.setdefault(root, []).append(identity_rule(ctx, root, node.output[0], g_out[0]))
            continue
        handler = vjp_for(node.op_type)
        if handler is None or node.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError(node.op_type, node.name, "no AttnLRP/CP-LRP gradient handler"
                                     + (f" for domain '{node.domain}'" if node.domain not in ("", "ai.onnx") else ""))
        sent = handler(ctx)
        for name, gradient, flows in zip(node.input, sent, carries):
            if gradient is not None and flows:
                received.setdefault(name, []).append(gradient)

    graph_outputs = [_with_dynamic_batch(v) for v in canonical.model.graph.output]
    relevance_outputs, layer_relevance_outputs = {}, []
    for name, tensors in sources.items():
        b.set_scope(f"relevance/{name}")
        parts = []
        for tensor in tensors:
            gradient = _gather(b, received.get(tensor), tensor)
            relevance = b.op("Mul", [tensor, gradient]) if gradient else b.op("Mul", [tensor, b.scalar(0.0)])
            if layer_relevances:
                label = f"{LAYER_RELEVANCE_PREFIX}input/{tensor}"
                b.nodes.append(helper.make_node("Identity", [relevance], [label], name=f"lrp/{label}"))
                graph_outputs.append(helper.make_tensor_value_info(label, TensorProto.FLOAT, None))
                layer_relevance_outputs.append(label)
            if tensor != name:  # token ids: each token's relevance is the sum over its embedding row
                relevance = b.op("ReduceSum", [relevance, b.ints([-1])], keepdims=0)
                relevance = b.op("Reshape", [relevance, b.op("Shape", [name])])
            parts.append(relevance)
        out_name = f"relevance_{name}"
        b.nodes.append(helper.make_node("Identity", [b.add_all(parts)], [out_name], name=f"lrp/output/{out_name}"))
        dims = [BATCH_DIM] + [d if d is not None else f"{name}_dim{k + 1}" for k, d in enumerate(fwd.shape(name)[1:])] \
            if fwd.shape(name) is not None else None
        graph_outputs.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, dims))
        relevance_outputs[name] = out_name
    graph_outputs.extend(extra_outputs)
    graph_outputs.extend(crp.outputs)

    explainer = _explainer_model(canonical.model, forward_nodes + b.nodes,
                                 [_with_dynamic_batch(v) for v in canonical.model.graph.input] + extra_inputs,
                                 graph_outputs, b.initializers)
    n_classes = shape[1] if kind == "classes" else (shape[2] if kind == "sequence" else 0)
    compiled = CompiledExplainer(
        model=explainer, inputs=list(fwd.input_names),
        target_input=extra_inputs[0].name if mode not in ("custom", "select") else None,
        custom_input=extra_inputs[0].name if mode in ("custom", "select") else None,
        output_names=canonical.output_names, relevance_outputs=relevance_outputs,
        target_output=extra_outputs[0].name if extra_outputs else None, logits=logits,
        n_classes=int(n_classes or 0), start_shape=tuple(shape[1:]),
        layer_rules=[(layer.name, layer.op_type, f"{layer.kind}: {rule!r}") for layer, rule in analysis.layers],
        layer_relevance_outputs=layer_relevance_outputs,
        position_input=position, position_output=extra_outputs[1].name if position else None,
        condition_inputs=crp.condition_inputs, concept_outputs=crp.concept_outputs)
    _write_metadata(compiled, composite, mode)
    return compiled


def _refuse_other_domains(model: onnx.ModelProto) -> None:
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError(node.op_type, node.name or "?", f"an op of domain '{node.domain}' that onnxlrp "
                                     "cannot de-fuse into standard ops; export the model without it (for "
                                     "onnxruntime's transformer optimizer: the unoptimised model)")
