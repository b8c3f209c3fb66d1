"""Where the explanation starts: the relevance put on the logits (RULES.md, "Output relevance").

    logit   R_c = z_c for the target class c, 0 elsewhere (default)
    one     R_c = 1 for c
    prob    R_c = softmax(z)_c for c
    custom  any tensor of the logits' shape, given by the caller
    contrastive  the log-odds of c against the others, through the pairwise difference layer
                 (onnxlrp.contrastive; here only the target is set up)

The target is an input of the explainer model (int64, one per sample); -1 means the arg-max class.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from .ops.context import Builder

MODES = ("logit", "one", "prob", "contrastive", "custom")
TARGET_INPUT = "target"
CUSTOM_INPUT = "output_relevance"
TARGET_OUTPUT = "target_explained"


def build_output_relevance(b: Builder, logits: str, dims: list[int], mode: str, taken_names: set[str]):
    """Emit the start relevance. dims: the logits' shape without the batch axis ([classes]; any shape in
    custom mode). Returns (relevance tensor, extra graph inputs, extra graph outputs)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
    b.set_scope("output")
    if mode == "custom":
        name = _free(CUSTOM_INPUT, taken_names)
        value = helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch"] + list(dims))
        return name, [value], []
    n_classes = dims[0]
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


def _free(name: str, taken: set[str]) -> str:
    candidate, k = name, 1
    while candidate in taken:
        candidate = f"lrp_{name}" if k == 1 else f"lrp_{name}_{k}"
        k += 1
    return candidate
