"""Graph rewrites that bring any exported model into the canonical form the compiler expects.

Each rewrite is one module; `canonicalize` runs them in order.
"""
from __future__ import annotations

import gc
from dataclasses import dataclass, field

import onnx
import onnx_graphsurgeon as gs

from ..errors import UnsupportedModelError
from .affine import fold_affine
from .batch import make_batch_dynamic
from .batchnorm import fold_batchnorm
from .defuse import defuse_contrib_ops
from .dense import normalise_dense
from .fold_constants import fold_constants
from .heads import SplitAttention, split_attention_heads
from .identity import remove_identities
from .logits import find_logits
from .pads import explicit_pads, fold_pad_into_conv
from .quantized import quantized_spans
from .shapes import ShapeInferenceError, exported, infer_shapes, symbolic_dims, without_weights
from .slice_assign import unscatter_slice_assignments
from .versions import normalise_versions
from .whole_slices import skip_whole_slices


@dataclass
class CanonicalModel:
    model: onnx.ModelProto  # canonical graph with inferred shapes
    logits: str             # name of the tensor the explanation starts from
    output_names: list[str]  # the original model's outputs, in order
    batch: int | None = None  # None: a dynamic batch; else the batch size the model is fixed to
    attentions: list[SplitAttention] = field(default_factory=list)   # split_heads: the attentions split per head


def canonicalize(model: onnx.ModelProto | list[onnx.ModelProto], output: int | str | None = None,
                 split_heads: bool = False) -> CanonicalModel:
    """The model in canonical form; `split_heads`: every attention computed one head at a time (heads.py) and
    Slices that keep their whole input read as that input (whole_slices.py), for the bounded-memory explainer.
    The model is rewritten in place. Handed over as a one-element list that holds its only reference, its
    memory (GBs for an LLM) goes as soon as the first rewrite has copied it."""
    handed = model if isinstance(model, list) else [model]
    del model
    output_names = [o.name for o in handed[0].graph.output]
    given = without_weights(handed[0])   # what the user gave, for telling whose shape inference failed
    try:
        return _canonicalize(handed.pop(), output, output_names, split_heads)
    except ShapeInferenceError as exc:
        try:
            onnx.shape_inference.infer_shapes(given, check_type=True, strict_mode=True, data_prop=True)
        except Exception as own:  # noqa: BLE001 - the model itself fails onnx's checks
            first = str(own).strip().splitlines()[0] if str(own).strip() else type(own).__name__
            raise UnsupportedModelError(f"the model fails ONNX shape inference: {first}") from None
        raise UnsupportedModelError(f"onnxlrp's rewrite of the model into canonical form failed shape inference, "
                                    f"although the model passes it: a bug in onnxlrp, please report it with the "
                                    f"model ({exc})") from None


def _canonicalize(model: onnx.ModelProto, output, output_names: list[str], split_heads: bool) -> CanonicalModel:
    model = defuse_contrib_ops(model)
    model = normalise_versions(model)
    model, batch = make_batch_dynamic(model)
    model = quantized_spans(fold_until_stable(model))
    graph = gs.import_onnx(model)
    remove_identities(graph)
    unscatter_slice_assignments(graph)
    explicit_pads(graph)
    fold_pad_into_conv(graph)
    normalise_dense(graph)
    fold_affine(graph)
    if fold_batchnorm(graph):
        fold_affine(graph)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    model = infer_shapes(exported(graph, model.ir_version))
    del graph
    gc.collect()   # the graph's cycles hold the previous model (GBs for an LLM) until collected
    attentions = []
    if split_heads:
        dims = symbolic_dims(model)
        model, attentions = split_attention_heads(skip_whole_slices(model, dims), dims)
        model = infer_shapes(model)
        gc.collect()
    return CanonicalModel(model=model, logits=find_logits(model, output), output_names=output_names, batch=batch,
                          attentions=attentions)


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
        model = exported(graph, model.ir_version)
        del graph
        gc.collect()
    return infer_shapes(model)

