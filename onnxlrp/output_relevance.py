"""Where the explanation starts: the relevance put on the logits (docs/rules.md, "Output relevance").

    logit   R_c = z_c for the target class c, 0 elsewhere (default)
    one     R_c = 1 for c
    prob    R_c = softmax(z)_c for c
    custom  any tensor of the logits' shape, given by the caller
    select  R = z * M, M given by the caller shaped like the output (onnxlrp.selections: a region of a
            segmentation, one detection, a direction); outputs of any shape, dynamic dims included
    contrastive  the log-odds of c against the others, through the pairwise difference layer
                 (onnxlrp.contrastive; here only the target is set up)

The target is an input of the explainer model (int64, one per sample); -1 means the arg-max class.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from .ops.context import Builder

MODES = ("logit", "one", "prob", "contrastive", "custom", "select")
TARGET_INPUT = "target"
CUSTOM_INPUT = "output_relevance"
SELECT_INPUT = "output_mask"
TARGET_OUTPUT = "target_explained"


def build_output_relevance(b: Builder, logits: str, dims: list[int], mode: str, taken_names: set[str]):
    """Emit the start relevance. dims: the logits' shape without the batch axis ([classes]; any shape in
    custom mode). Returns (relevance tensor, extra graph inputs, extra graph outputs)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
    b.set_scope("output")
    if mode in ("custom", "select"):
        name = _free(CUSTOM_INPUT if mode == "custom" else SELECT_INPUT, taken_names)
        value = helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch"] + free_dims(dims))
        return (name if mode == "custom" else b.op("Mul", [logits, name], hint="start")), [value], []
    n_classes = dims[0]
    if len(dims) > 1:   # [N, C, 1, ...]: classifier logits of a fully convolutional net
        flat = b.op("Flatten", [logits], axis=1, hint="scores")
        relevance, inputs, outputs = build_output_relevance(b, flat, dims[:1], mode, taken_names)
        if relevance is not None:
            relevance = b.op("Reshape", [relevance, b.op("Shape", [logits])])
        return relevance, inputs, outputs
    target = _free(TARGET_INPUT, taken_names)
    target_input = helper.make_tensor_value_info(target, TensorProto.INT64, ["batch"])
    predicted = b.op("ArgMax", [logits], axis=1, keepdims=0, hint="predicted")
    use_predicted = b.op("Less", [target, b.op("Constant", [], value=helper.make_tensor(
        "value", TensorProto.INT64, [], [0]))])
    chosen = _free(TARGET_OUTPUT, taken_names)
    b.nodes.append(helper.make_node("Where", [use_predicted, predicted, target], [chosen], name=b.fresh("target")))
    one_hot = b.op("OneHot", [chosen, b.ints([n_classes]), b.const(np.array([0.0, 1.0], np.float32), hint="off_on")],
                   axis=-1, hint="one_hot")
    if mode == "contrastive":
        relevance = None  # starts on the pairwise layer, see onnxlrp.contrastive
    elif mode == "one":
        relevance = one_hot
    elif mode == "logit":
        relevance = b.op("Mul", [one_hot, logits], hint="start")
    else:  # prob
        relevance = b.op("Mul", [one_hot, b.op("Softmax", [logits], axis=1)], hint="start")
    chosen_output = helper.make_tensor_value_info(chosen, TensorProto.INT64, ["batch"])
    return relevance, [target_input], [chosen_output]


def free_dims(dims) -> list:
    """Dims for a value_info: ints where known, a name of their own where not."""
    return [d if isinstance(d, int) else f"out_dim{k + 1}" for k, d in enumerate(dims)]


def _free(name: str, taken: set[str]) -> str:
    candidate, k = name, 1
    while candidate in taken:
        candidate = f"lrp_{name}" if k == 1 else f"lrp_{name}_{k}"
        k += 1
    return candidate
