"""Where the explanation starts: the relevance put on the explained output (docs/rules.md, "Output relevance").

Outputs: classifier logits [batch, classes] (or [batch, classes, 1, ...]); sequence outputs [batch, seq, vocab
or labels], explained at one position per sample (input `position`, -1 the last); any output in the modes
custom and select. The target is an input of the explainer model (int64, one per sample); -1 means the arg-max
class (at the explained position).

    logit          R_c = z_c for the target class c, 0 elsewhere (default); as a gradient, the seed 1 at c
    one            R_c = 1 for c
    prob           R_c = softmax(z)_c for c
    contrastive    the log-odds of c against the others, through the pairwise difference layer
                   (onnxlrp/contrastive.py; here only the target is set up)
    mean_contrast  z_c minus the mean of the other classes: LXT's contrastive seed, +1 at c and -1/N at each of
                   the N others
    custom         any tensor shaped like the output, given by the caller (R)
    select         R = z * M, M given by the caller shaped like the output (onnxlrp/selections.py: a region of
                   a segmentation, one detection, a direction)

Each start is emitted in the form it is cheapest in (R or the gradient seed g, with R = z * g); the walk
turns it into the form the first handler takes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto, helper

from ..errors import UnsupportedModelError
from ..ops.context import Builder
from .row import ExplainedRow
from .signals import Signal

MODES = ("logit", "one", "prob", "contrastive", "mean_contrast", "custom", "select")
TARGET_INPUT = "target"
CUSTOM_INPUT = "output_relevance"
SELECT_INPUT = "output_mask"
TARGET_OUTPUT = "target_explained"
POSITION_INPUT = "position"
POSITION_OUTPUT = "position_explained"


@dataclass
class Start:
    signal: Signal | None                 # None in contrastive mode: it starts on the pairwise layer
    kind: str                             # "classes", "sequence", "custom" or "select"
    inputs: list = field(default_factory=list)    # value infos of the explainer's extra inputs
    outputs: list = field(default_factory=list)   # value infos of its extra outputs
    target_input: str | None = None
    target_output: str | None = None
    custom_input: str | None = None       # custom: R; select: the mask M
    position_input: str | None = None
    position_output: str | None = None
    n_classes: int = 0
    row: ExplainedRow | None = None      # sequence outputs: the start is non-zero in one row (row.py)


def free_dims(dims) -> list:
    """Dims for a value_info: ints where known, a name of their own where not."""
    return [d if isinstance(d, int) else f"out_dim{k + 1}" for k, d in enumerate(dims)]


def free_name(name: str, taken: set[str]) -> str:
    candidate, k = name, 1
    while candidate in taken:
        candidate = f"lrp_{name}" if k == 1 else f"lrp_{name}_{k}"
        k += 1
    return candidate


def _int_scalar(b: Builder, value: int) -> str:
    return b.op("Constant", [], value=helper.make_tensor("value", TensorProto.INT64, [], [value]))


def output_kind(shape) -> str | None:
    """"classes" ([batch, classes] or [batch, classes, 1, ...] with a known class count), "sequence"
    ([batch, seq, vocab] with a known vocabulary), else None."""
    dims = list(shape[1:])
    if dims and dims[0] is not None and all(d == 1 for d in dims[1:]):
        return "classes"
    if len(dims) == 2 and dims[1] is not None:
        return "sequence"
    return None


def build_start(b: Builder, logits: str, shape: tuple, mode: str, taken: set[str]) -> Start:
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
    b.set_scope("output")
    if mode in ("custom", "select"):
        name = free_name(CUSTOM_INPUT if mode == "custom" else SELECT_INPUT, taken)
        value = helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch"] + free_dims(shape[1:]))
        # select: R = z * M, i.e. the seed M itself
        signal = Signal(name, "R") if mode == "custom" else Signal(name, "g")
        return Start(signal=signal, kind=mode, inputs=[value], custom_input=name)
    kind = output_kind(shape)
    if kind is None:
        raise UnsupportedModelError(f"the output '{logits}' has shape {list(shape)}; class modes explain [batch, classes] "
                                    "logits (or [batch, classes, 1, ...]) and [batch, seq, vocab] sequence outputs; for "
                                    "other outputs select what to explain (region=, box=, direction=: mode 'select') "
                                    "or give the start relevance (mode 'custom')")
    dims = list(shape[1:])
    start = Start(signal=None, kind=kind)
    start.target_input = free_name(TARGET_INPUT, taken)
    start.inputs.append(helper.make_tensor_value_info(start.target_input, TensorProto.INT64, ["batch"]))
    if kind == "classes":
        n = dims[0]
        scores = b.op("Flatten", [logits], axis=1, hint="scores") if len(dims) > 1 else logits
    else:
        n = dims[1]
        start.position_input = free_name(POSITION_INPUT, taken)
        start.inputs.append(helper.make_tensor_value_info(start.position_input, TensorProto.INT64, ["batch"]))
        length = b.op("Shape", [logits], start=1, end=2)
        negative = b.op("Less", [start.position_input, _int_scalar(b, 0)])
        start.position_output = free_name(POSITION_OUTPUT, taken)
        b.nodes.append(helper.make_node("Where", [negative, b.op("Add", [start.position_input, length]),
                                                  start.position_input], [start.position_output],
                                        name=b.fresh("position")))
        index = b.op("Expand", [b.op("Unsqueeze", [start.position_output, b.ints([1, 2])]),
                                b.op("Concat", [b.op("Shape", [logits], start=0, end=1), b.ints([1, n])], axis=0)])
        scores = b.op("Squeeze", [b.op("GatherElements", [logits, index], axis=1), b.ints([1])], hint="scores")
    start.n_classes = int(n)
    predicted = b.op("ArgMax", [scores], axis=1, keepdims=0, hint="predicted")
    start.target_output = free_name(TARGET_OUTPUT, taken)
    b.nodes.append(helper.make_node("Where", [b.op("Less", [start.target_input, _int_scalar(b, 0)]), predicted,
                                              start.target_input], [start.target_output], name=b.fresh("target")))
    start.outputs.append(helper.make_tensor_value_info(start.target_output, TensorProto.INT64, ["batch"]))
    if start.position_output:
        start.outputs.append(helper.make_tensor_value_info(start.position_output, TensorProto.INT64, ["batch"]))
    if mode == "contrastive":
        if kind != "classes":
            raise UnsupportedModelError("mode 'contrastive' (the pairwise log-odds) explains classifier logits; for a "
                                        "sequence output use mode 'mean_contrast' (the target against the mean of the "
                                        "other tokens)")
        return start
    one_hot = b.op("OneHot", [start.target_output, b.ints([n]), b.const(np.array([0.0, 1.0], np.float32),
                                                                        hint="off_on")], axis=-1, hint="one_hot")
    if mode == "logit":
        seed, form = one_hot, "g"
    elif mode == "mean_contrast":
        others = b.op("Sub", [b.scalar(1.0), one_hot])
        seed = b.op("Sub", [one_hot, b.op("Mul", [others, b.scalar(1.0 / max(n - 1, 1))])], hint="mean_contrast")
        form = "g"
    elif mode == "one":
        seed, form = one_hot, "R"
    else:  # prob
        seed, form = b.op("Mul", [one_hot, b.op("Softmax", [scores], axis=1)], hint="start"), "R"
    if kind == "classes":
        if len(dims) > 1:
            seed = b.op("Reshape", [seed, b.op("Shape", [logits])])
    else:
        at = b.op("OneHot", [start.position_output, length, b.const(np.array([0.0, 1.0], np.float32),
                                                                     hint="off_on")], axis=-1, hint="position_one_hot")
        row = seed
        seed = b.op("Mul", [b.op("Unsqueeze", [at, b.ints([2])]), b.op("Unsqueeze", [row, b.ints([1])])],
                    hint="seed")
        start.row = ExplainedRow(seed=seed, at=at, row=row, position=start.position_output,
                                 output=logits)
    start.signal = Signal(seed, form)
    return start
