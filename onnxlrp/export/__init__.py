"""Exporting the explainer model for inference servers: a Triton model repository or an MLflow model.

    from onnxlrp.export import export
    export("model.onnx", "repo/", format="triton", composite="epsilon_plus_flat")
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .. import composites as composites_module
from ..compiler import check_explainer, compile_explainer
from ..errors import OnnxLrpError
from ..model import load_model
from .mlflow_model import export_mlflow
from .triton import export_triton

FORMATS = ("triton", "mlflow")


def export(model, out, format: str = "triton", composite=None, mode: str = "logit", output=None, inputs=None,
           name: str | None = None, memory: str = "default", **options) -> Path:
    """Compile `model`'s explainer and write it for a server.

    format "triton": `out` is the model repository; the model goes to out/<name>/ (name: the model file's
        stem + "_lrp"). Options: version, max_batch_size, device ("cpu"/"gpu"), instances, threads,
        queue_delay_us, external_data, overwrite.
    format "mlflow": `out` is the MLflow model folder. Options: device, external_data, overwrite.
    """
    if format not in FORMATS:
        raise OnnxLrpError(f"unknown export format '{format}'; choose {' or '.join(FORMATS)}")
    source = load_model(model)
    composite = composites_module.get(composite)
    compiled = compile_explainer(source, composite=composite, mode=mode, output=output, inputs=inputs,
                                 memory=memory)
    check_explainer(compiled.model)
    described = f"composite {composite!r}, mode {mode}"
    if format == "mlflow":
        metadata = {"onnxlrp": json.dumps({"composite": repr(composite), "mode": mode,
                                           "relevance_outputs": compiled.relevance_outputs,
                                           "target_input": compiled.target_input})}
        return export_mlflow(compiled.model, out, metadata=metadata, **options)
    if name is None:
        name = Path(os.fspath(model)).name.removesuffix(".onnx") + "_lrp" if isinstance(model, (str, os.PathLike)) \
            else "explainer"
    return export_triton(compiled.model, out, name=name, fixed_batch=_batch_size(source), description=described,
                         **options)


def _batch_size(model) -> int | None:
    """The source model's fixed batch size, if its first input has one."""
    initialisers = {t.name for t in model.graph.initializer}
    first = next(v for v in model.graph.input if v.name not in initialisers)
    dims = first.type.tensor_type.shape.dim
    return dims[0].dim_value if len(dims) and dims[0].HasField("dim_value") else None
