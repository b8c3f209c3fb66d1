"""The explainer model as an MLflow model (ONNX flavour, servable with `mlflow models serve`)."""
from __future__ import annotations

from pathlib import Path

import onnx

from .. import extras
from ..errors import OnnxLrpError
from ..files import save_dir_atomic
from ..model import is_large
from .tensors import graph_tensors

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "gpu": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def export_mlflow(model: onnx.ModelProto, out, device: str = "cpu", external_data: bool | None = None,
                  overwrite: bool = False, metadata: dict | None = None) -> Path:
    """Write `model` (an explainer model) as an MLflow model folder with a tensor signature, so that the
    scoring server reads JSON inputs with the model's own dtypes. Returns the folder."""
    try:
        import mlflow.onnx
        from mlflow.models import ModelSignature
        from mlflow.types.schema import Schema, TensorSpec
    except ImportError as exc:
        raise extras.missing("mlflow", "exporting an MLflow model", exc) from None
    if device not in PROVIDERS:
        raise OnnxLrpError(f"unknown device '{device}'; choose cpu or gpu")
    inputs, outputs = graph_tensors(model)

    def spec(tensor):
        return TensorSpec(tensor.dtype, tuple(-1 if d is None else d for d in tensor.dims), tensor.name)

    signature = ModelSignature(inputs=Schema([spec(t) for t in inputs]), outputs=Schema([spec(t) for t in outputs]))
    large = is_large(model) if external_data is None else external_data

    def write(folder: Path) -> None:
        mlflow.onnx.save_model(model, str(folder), signature=signature, metadata=metadata,
                               onnx_execution_providers=PROVIDERS[device], save_as_external_data=large)

    return save_dir_atomic(out, write, overwrite=overwrite)
