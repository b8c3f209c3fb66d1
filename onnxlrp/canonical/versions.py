"""Opset and IR-version normalisation, and initialisers listed as graph inputs (IR < 4 models)."""
from __future__ import annotations

import onnx
from onnx import helper, version_converter

from ..errors import UnsupportedModelError

# The relevance graph uses ops in their opset-17 form (ReduceSum axes as input, ScatterElements with
# reduction="add", Split sizes as input); older models are converted up to it.
MIN_OPSET = 17


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 1


def normalise_versions(model: onnx.ModelProto) -> onnx.ModelProto:
    opset = default_opset(model)
    if opset < MIN_OPSET:
        try:
            model = version_converter.convert_version(model, MIN_OPSET)
        except Exception as exc:
            raise UnsupportedModelError(
                f"cannot convert the model from opset {opset} to opset {MIN_OPSET} "
                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                f"re-export it with opset >= {MIN_OPSET}"
            ) from None
    _drop_initializer_inputs(model)  # after conversion: the converter expects IR-3 models as they are
    # the lowest IR version that carries these opsets is accepted by every onnxruntime that runs them
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    return model


def _drop_initializer_inputs(model: onnx.ModelProto) -> None:
    """IR 3 models list every initialiser as a graph input too; onnxlrp treats them as constants."""
    init_names = {init.name for init in model.graph.initializer}
    kept = [inp for inp in model.graph.input if inp.name not in init_names]
    if len(kept) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(kept)
