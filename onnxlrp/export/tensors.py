"""The explainer model's inputs and outputs as servers describe them: name, element type, dims."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper


@dataclass(frozen=True)
class Tensor:
    name: str
    elem_type: int            # onnx.TensorProto.FLOAT, INT64, ...
    dims: tuple               # one entry per axis: an int, or None where the size is free (the batch axis)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))


def graph_tensors(model: onnx.ModelProto) -> tuple[list[Tensor], list[Tensor]]:
    def describe(value: onnx.ValueInfoProto) -> Tensor:
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim)
        return Tensor(value.name, value.type.tensor_type.elem_type, dims)

    initialisers = {t.name for t in model.graph.initializer}
    inputs = [describe(v) for v in model.graph.input if v.name not in initialisers]
    return inputs, [describe(v) for v in model.graph.output]


def runs_at_batch(model: onnx.ModelProto, batch: int) -> bool:
    """Whether the model runs on a batch of `batch` samples and returns that many, so that a server may
    batch requests together."""
    from ..runtime import new_session, sample_feeds

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:   # new_session: a model over 2 GiB too
        session = new_session(model, options, ["CPUExecutionProvider"])
        results = session.run(None, sample_feeds(session, batch))
    except Exception:  # onnxruntime raises several unrelated types for shape errors
        return False
    return all(np.ndim(r) >= 1 and np.shape(r)[0] == batch for r in results)
