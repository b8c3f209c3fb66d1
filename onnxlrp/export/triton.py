"""A Triton Inference Server model repository for the explainer model (onnxruntime backend).

    REPO/<name>/config.pbtxt
    REPO/<name>/<version>/model.onnx             one file, or for large models a folder:
    REPO/<name>/<version>/model.onnx/model.onnx  + model.onnx.data (the weights)
"""
from __future__ import annotations

import json
from pathlib import Path

import onnx
from onnx import TensorProto

from .. import __version__
from ..errors import OnnxLrpError
from ..files import save_atomic, save_dir_atomic
from ..model import is_large, save_model
from .tensors import Tensor, graph_tensors, runs_at_batch

TRITON_TYPES = {
    TensorProto.FLOAT: "TYPE_FP32", TensorProto.FLOAT16: "TYPE_FP16", TensorProto.DOUBLE: "TYPE_FP64",
    TensorProto.BFLOAT16: "TYPE_BF16", TensorProto.INT64: "TYPE_INT64", TensorProto.INT32: "TYPE_INT32",
    TensorProto.INT16: "TYPE_INT16", TensorProto.INT8: "TYPE_INT8", TensorProto.UINT8: "TYPE_UINT8",
    TensorProto.UINT16: "TYPE_UINT16", TensorProto.UINT32: "TYPE_UINT32", TensorProto.UINT64: "TYPE_UINT64",
    TensorProto.BOOL: "TYPE_BOOL", TensorProto.STRING: "TYPE_STRING",
}
DEVICES = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}


def export_triton(model: onnx.ModelProto, repository, name: str, version: int = 1, max_batch_size: int = 8,
                  device: str = "cpu", instances: int = 1, threads: int | None = None,
                  queue_delay_us: int = 100, external_data: bool | None = None, overwrite: bool = False,
                  fixed_batch: int | None = None, description: str = "") -> Path:
    """Write `model` (an explainer model) into a Triton repository; returns REPO/<name>.

    max_batch_size > 0 lets Triton batch requests (dims then leave out the batch axis); if the model does
    not run at batch 2 it is exported without batching (max_batch_size 0) at `fixed_batch`, the source
    model's own batch size.
    """
    if device not in DEVICES:
        raise OnnxLrpError(f"unknown device '{device}'; choose cpu or gpu")
    if version < 1 or instances < 1 or max_batch_size < 0:
        raise OnnxLrpError("--version and --instances must be at least 1, --max-batch-size at least 0")
    inputs, outputs = graph_tensors(model)
    batch = None
    if max_batch_size > 0 and not runs_at_batch(model, 2):
        if not fixed_batch:
            raise OnnxLrpError("the explainer does not run on a batch of 2 and the model has no fixed batch size; "
                               "export it with --max-batch-size 0")
        max_batch_size, batch = 0, fixed_batch
        print(f"note: the model runs at batch size {fixed_batch} only; exported without batching (max_batch_size 0)")
    config = triton_config(name, inputs, outputs, max_batch_size, device, instances, threads, queue_delay_us,
                           batch=batch, description=description)
    validate_config(config)
    model_dir = Path(repository) / name
    large = is_large(model) if external_data is None else external_data

    def write_version(folder: Path) -> None:
        # Triton's onnxruntime backend loads a multi-file model from a folder named model.onnx
        save_model(model, folder / "model.onnx" / "model.onnx" if large else folder / "model.onnx",
                   external_data=large)

    save_dir_atomic(model_dir / str(version), write_version, overwrite=overwrite)
    save_atomic(model_dir / "config.pbtxt", lambda tmp: Path(tmp).write_text(config))
    return model_dir


def triton_config(name: str, inputs: list[Tensor], outputs: list[Tensor], max_batch_size: int, device: str,
                  instances: int, threads: int | None, queue_delay_us: int, batch: int | None = None,
                  description: str = "") -> str:
    """config.pbtxt in protobuf text format. With batching, a tensor that is only [batch] (the target)
    is declared with dims [1] and reshaped to [] for the model, Triton's convention for per-sample scalars."""
    lines = [f"# written by onnxlrp {__version__}" + (f": {description}" if description else ""),
             f"name: {_quote(name)}", 'platform: "onnxruntime_onnx"', f"max_batch_size: {max_batch_size}"]
    for section, tensors in (("input", inputs), ("output", outputs)):
        entries = [_tensor_entry(t, batched=max_batch_size > 0, batch=batch) for t in tensors]
        lines.append(f"{section} [\n" + ",\n".join(entries) + "\n]")
    if max_batch_size > 0:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n}}")
    lines.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: {DEVICES[device]}\n  }}\n]")
    if threads:
        lines.append('parameters {\n  key: "intra_op_thread_count"\n'
                     f'  value: {{ string_value: "{int(threads)}" }}\n}}')
    return "\n".join(lines) + "\n"


def _tensor_entry(tensor: Tensor, batched: bool, batch: int | None) -> str:
    if tensor.elem_type not in TRITON_TYPES:
        raise OnnxLrpError(f"tensor '{tensor.name}' has an element type Triton cannot serve "
                           f"({TensorProto.DataType.Name(tensor.elem_type)})")
    dims = [-1 if d is None else d for d in tensor.dims]
    fields = [f"name: {_quote(tensor.name)}", f"data_type: {TRITON_TYPES[tensor.elem_type]}"]
    if batched:
        dims = dims[1:]
    elif batch is not None and dims:
        dims[0] = batch
    if batched and not dims:
        fields += ["dims: [ 1 ]", "reshape: { shape: [ ] }"]
    else:
        fields.append(f"dims: [ {', '.join(str(d) for d in dims)} ]")
    return "  {\n" + "\n".join(f"    {field}" for field in fields) + "\n  }"


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)   # a JSON string is a valid protobuf text-format string


def validate_config(text: str, required: bool = False):
    """Parse `text` with Triton's own ModelConfig protobuf (from tritonclient) when it is installed; a
    field or value that Triton does not know is an error. Returns the parsed message, or None."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        if required:
            raise
        return None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise OnnxLrpError(f"internal error: the Triton config does not parse ({exc})") from None
