"""Find the logits: the tensor the explanation starts from.

A trailing Softmax / LogSoftmax / Sigmoid is not explained: the explanation starts at its input.
Flatten, Reshape, Squeeze and Identity between that op and the graph output are looked through.
"""
from __future__ import annotations

import onnx

from ..errors import UnsupportedModelError

OUTPUT_SQUASHERS = ("Softmax", "LogSoftmax", "Sigmoid")
LOOK_THROUGH = ("Flatten", "Reshape", "Squeeze", "Identity")


def output_index(model: onnx.ModelProto, output: int | str | None) -> int:
    names = [o.name for o in model.graph.output]
    if output is None:  # the first float output: classifiers often put an int64 label first
        floats = [i for i, o in enumerate(model.graph.output) if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
        return floats[0] if floats else 0
    if isinstance(output, str):
        if output not in names:
            raise UnsupportedModelError(f"the model has no output '{output}'; its outputs are {names}")
        return names.index(output)
    if not 0 <= output < len(names):
        raise UnsupportedModelError(f"output index {output} is out of range; the model has {len(names)} outputs")
    return output


def find_logits(model: onnx.ModelProto, output: int | str | None = None) -> str:
    producer = {out: node for node in model.graph.node for out in node.output}
    tensor = model.graph.output[output_index(model, output)].name
    walk = tensor
    while walk in producer:
        node = producer[walk]
        if node.op_type in OUTPUT_SQUASHERS:
            return node.input[0]
        if node.op_type not in LOOK_THROUGH:
            break
        walk = node.input[0]
    return tensor
