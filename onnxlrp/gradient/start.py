"""Where the modified gradient starts (docs/rules.md: R_t = t * g_t, so g_out = R_out / out).

Classifier logits [batch, classes] (or [batch, classes, 1, ...]): one target class per sample. Sequence
outputs [batch, seq, vocab or labels]: one target at one position per sample (`position` input, -1 the
last; `target` -1 the arg-max at that position). Modes: logit (R = z_c, so g = 1 at c), one (R = 1),
prob (R = softmax(z)_c), contrastive (LXT's seed: g = +1 at c and -1/N at each of the N other classes or
tokens, explaining z_c - mean of the others), custom (R given, shaped like the output)."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from ..errors import UnsupportedModelError
from ..ops.context import Builder
from ..output_relevance import CUSTOM_INPUT, SELECT_INPUT, TARGET_INPUT, TARGET_OUTPUT, _free, free_dims

POSITION_INPUT = "position"
POSITION_OUTPUT = "position_explained"
GRADIENT_MODES = ("logit", "one", "prob", "contrastive", "custom", "select")


def _int_scalar(b: Builder, value: int) -> str:
    return b.op("Constant", [], value=helper.make_tensor("value", TensorProto.INT64, [], [value]))


def _over_output(b: Builder, relevance: str, z: str) -> str:
    """R / z, 0 where z is 0."""
    is_zero = b.op("Equal", [z, b.scalar(0.0)])
    safe = b.op("Where", [is_zero, b.scalar(1.0), z])
    return b.op("Where", [is_zero, b.scalar(0.0), b.op("Div", [relevance, safe])])


def build_seed(b: Builder, logits: str, shape: tuple, mode: str, taken: set[str]):
    """Returns (seed gradient, extra inputs, extra outputs, position input or None, kind) where kind is
    "classes" or "sequence"."""
    if mode not in GRADIENT_MODES:
        raise UnsupportedModelError(f"mode '{mode}' is not available for transformer composites; choose one of "
                                    f"{', '.join(GRADIENT_MODES)}")
    b.set_scope("output")
    if mode in ("custom", "select"):   # select: R = z * M, so g = M
        name = _free(CUSTOM_INPUT if mode == "custom" else SELECT_INPUT, taken)
        value = helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch"] + free_dims(shape[1:]))
        return (_over_output(b, name, logits) if mode == "custom" else name), [value], [], None, mode
    dims = list(shape[1:])
    if len(dims) >= 1 and all(d == 1 for d in dims[1:]) and dims[0] is not None:
        kind = "classes"
    elif len(dims) == 2 and dims[1] is not None:
        kind = "sequence"
    else:
        raise UnsupportedModelError(f"the output '{logits}' has shape {list(shape)}; transformer composites explain "
                                    "[batch, classes] logits and [batch, seq, vocab or labels] outputs (mode "
                                    "'custom' takes any shape)")
    target = _free(TARGET_INPUT, taken)
    extra_inputs = [helper.make_tensor_value_info(target, TensorProto.INT64, ["batch"])]
    position = None
    if kind == "classes":
        scores = b.op("Flatten", [logits], axis=1) if len(dims) > 1 else logits
        n = dims[0]
    else:
        n = dims[1]
        position = _free(POSITION_INPUT, taken)
        extra_inputs.append(helper.make_tensor_value_info(position, TensorProto.INT64, ["batch"]))
        length = b.op("Shape", [logits], start=1, end=2)
        negative = b.op("Less", [position, _int_scalar(b, 0)])
        chosen_position = _free(POSITION_OUTPUT, taken)
        b.nodes.append(helper.make_node("Where", [negative, b.op("Add", [position, length]), position],
                                        [chosen_position], name=b.fresh("position")))
        index = b.op("Expand", [b.op("Unsqueeze", [chosen_position, b.ints([1, 2])]),
                                b.op("Concat", [b.op("Shape", [logits], start=0, end=1), b.ints([1, n])], axis=0)])
        scores = b.op("Squeeze", [b.op("GatherElements", [logits, index], axis=1), b.ints([1])], hint="scores")
    predicted = b.op("ArgMax", [scores], axis=1, keepdims=0, hint="predicted")
    chosen = _free(TARGET_OUTPUT, taken)
    b.nodes.append(helper.make_node("Where", [b.op("Less", [target, _int_scalar(b, 0)]), predicted, target],
                                    [chosen], name=b.fresh("target")))
    one_hot = b.op("OneHot", [chosen, b.ints([n]), b.const(np.array([0.0, 1.0], np.float32), hint="off_on")],
                   axis=-1, hint="one_hot")
    if mode == "one":
        one_hot = _over_output(b, one_hot, scores)
    elif mode == "contrastive":
        others = b.op("Sub", [b.scalar(1.0), one_hot])
        one_hot = b.op("Sub", [one_hot, b.op("Mul", [others, b.scalar(1.0 / max(n - 1, 1))])], hint="contrastive")
    elif mode == "prob":
        one_hot = _over_output(b, b.op("Mul", [one_hot, b.op("Softmax", [scores], axis=1)]), scores)
    if kind == "classes":
        seed = b.op("Reshape", [one_hot, b.op("Shape", [logits])]) if len(dims) > 1 else one_hot
    else:
        at = b.op("OneHot", [chosen_position, length, b.const(np.array([0.0, 1.0], np.float32), hint="off_on")],
                  axis=-1, hint="position_one_hot")
        seed = b.op("Mul", [b.op("Unsqueeze", [at, b.ints([2])]), b.op("Unsqueeze", [one_hot, b.ints([1])])],
                    hint="seed")
    extra_outputs = [helper.make_tensor_value_info(chosen, TensorProto.INT64, ["batch"])]
    if position:
        extra_outputs.append(helper.make_tensor_value_info(chosen_position, TensorProto.INT64, ["batch"]))
    return seed, extra_inputs, extra_outputs, position, kind
