"""Refusing hostile and broken model files before anything is compiled: one clear line each.

What it checks, in order: the graph has nodes and outputs; IR version and opsets are ones onnx knows;
no input has a zero or absurd dim (refused before anything is allocated, with the size it would need);
every initialiser holds the bytes its dims promise; no weight holds NaN (or Inf where a layer multiplies
by it); external data stays inside the model's folder, in regular files, within their size (checked
before a byte is read). Then the model goes through onnxruntime's own loader (an optimisation-free
session, for models up to ORT_CHECK_LIMIT bytes; larger ones through onnx's checker), so that what
onnxruntime would refuse is refused here, saying so, instead of becoming an explainer that cannot run.
"""
from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import ModelLoadError, UnsupportedModelError

ORT_CHECK_LIMIT = 768 * 1024**2          # bytes of model up to which onnxruntime's loader checks it
PROTOBUF_LIMIT = 2 * 1024**3 - 1024**2   # bytes of model from which its weights go into an external data file
ORT_ONNX_DOMAIN_OPS = ("SimplifiedLayerNormalization",)   # onnxruntime's own, in the onnx domain
INPUT_LIMIT = 16 * 1024**3               # bytes one sample of one input may take
MIN_IR_VERSION = 3


def check_external_data(model: onnx.ModelProto, folder: Path) -> None:
    """Every external tensor's file is a regular file inside `folder` (symlinks resolved), and holds the
    bytes its entry points at. Nothing is read."""
    root = folder.resolve()
    for tensor in _external_tensors(model):
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        where = f"tensor '{tensor.name}' keeps its data in '{location}'"
        if not location or os.path.isabs(location) or ".." in Path(location).parts:
            raise ModelLoadError(f"{where}: external data must be a relative path inside the model's folder")
        path = (root / location)
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise ModelLoadError(f"{where}, which does not exist beside the model") from None
        if root not in resolved.parents:
            raise ModelLoadError(f"{where}, which leads outside the model's folder (to '{resolved}'); refused")
        status = resolved.stat()
        if not stat.S_ISREG(status.st_mode):
            raise ModelLoadError(f"{where}, which is not a regular file; refused")
        offset, length = int(info.get("offset", 0) or 0), info.get("length")
        needed = offset + (int(length) if length else 0)
        if offset < 0 or needed > status.st_size:
            raise ModelLoadError(f"{where} at bytes {offset}..{needed}, past the end of that file "
                                 f"({status.st_size} bytes)")


def _external_tensors(model: onnx.ModelProto):
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            yield tensor


def check_structure(model: onnx.ModelProto, name: str = "the model") -> None:
    graph = model.graph
    if len(graph.node) == 0:
        raise ModelLoadError(f"{name} holds no graph nodes: is it an ONNX model?")
    if len(graph.output) == 0:
        raise ModelLoadError(f"{name} has no graph outputs: there is nothing to explain")
    if not MIN_IR_VERSION <= model.ir_version <= onnx.IR_VERSION:
        raise ModelLoadError(f"{name} has IR version {model.ir_version}; onnx {onnx.__version__} knows "
                             f"{MIN_IR_VERSION}..{onnx.IR_VERSION} (re-export it, or update onnx and onnxruntime)")
    known = onnx.defs.onnx_opset_version()
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and not 1 <= entry.version <= known:
            raise ModelLoadError(f"{name} imports opset {entry.version} of the onnx domain; onnx "
                                 f"{onnx.__version__} knows 1..{known}")
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import) and \
            any(n.domain in ("", "ai.onnx") for n in graph.node):
        raise ModelLoadError(f"{name} uses onnx ops but imports no onnx opset")
    names = [o.name for o in graph.output]
    if len(set(names)) != len(names):
        raise ModelLoadError(f"{name} lists the output '{_first_duplicate(names)}' twice")
    constants = {t.name for t in graph.initializer}
    for value in graph.input:
        if value.name in constants or not value.type.HasField("tensor_type"):
            continue
        dims = value.type.tensor_type.shape.dim
        static = [d.dim_value for d in dims if d.HasField("dim_value")]
        if any(d <= 0 for d in static) and any(d.HasField("dim_value") and d.dim_value <= 0 for d in list(dims)[1:]):
            raise ModelLoadError(f"input '{value.name}' has a zero-sized dim {[_dim(d) for d in dims]}: it holds no "
                                 "data to explain")
        itemsize = _itemsize(value.type.tensor_type.elem_type)
        per_sample = math.prod(d.dim_value for d in list(dims)[1:] if d.HasField("dim_value")) * itemsize
        if per_sample > INPUT_LIMIT:
            raise ModelLoadError(f"input '{value.name}' has dims {[_dim(d) for d in dims]}: one sample would take "
                                 f"{_size(per_sample)}, more than the {_size(INPUT_LIMIT)} onnxlrp allows; refused "
                                 "before allocating anything")
    for tensor in graph.initializer:
        _check_initializer(tensor)


def _first_duplicate(names):
    seen = set()
    for n in names:
        if n in seen:
            return n
        seen.add(n)
    return None


def _dim(d):
    return d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")


def _itemsize(elem_type: int) -> int:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except Exception:  # noqa: BLE001 - undefined or string types
        return 1


# 4-bit and 2-bit types are packed: two (four) values a byte, the last byte padded
_PACKED_BITS = {getattr(TensorProto, name): bits for name, bits in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4),
                                                                    ("INT2", 2), ("UINT2", 2))
                if hasattr(TensorProto, name)}


def _raw_bytes(count: int, elem_type: int) -> int:
    bits = _PACKED_BITS.get(elem_type)
    return (count * bits + 7) // 8 if bits else count * _itemsize(elem_type)


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


_TYPED_FIELDS = {TensorProto.FLOAT: "float_data", TensorProto.DOUBLE: "double_data", TensorProto.INT64: "int64_data",
                 TensorProto.UINT64: "uint64_data", TensorProto.INT32: "int32_data", TensorProto.INT16: "int32_data",
                 TensorProto.INT8: "int32_data", TensorProto.UINT8: "int32_data", TensorProto.BOOL: "int32_data",
                 TensorProto.FLOAT16: "int32_data", TensorProto.UINT16: "int32_data"}


def _check_initializer(tensor: TensorProto) -> None:
    if any(d < 0 for d in tensor.dims):
        raise ModelLoadError(f"initializer '{tensor.name}' has negative dims {list(tensor.dims)}")
    count = math.prod(tensor.dims)
    if tensor.data_location == TensorProto.EXTERNAL or tensor.data_type == TensorProto.STRING:
        return
    if tensor.HasField("raw_data"):
        expected = _raw_bytes(count, tensor.data_type)
        if len(tensor.raw_data) != expected:
            raise ModelLoadError(f"initializer '{tensor.name}' has dims {list(tensor.dims)} ({_size(expected)}) but "
                                 f"holds {_size(len(tensor.raw_data))}: the file is damaged")
        return
    field = _TYPED_FIELDS.get(tensor.data_type)
    if field is not None:
        held = len(getattr(tensor, field))
        if held != count and not (count == 0 and held == 0):
            raise ModelLoadError(f"initializer '{tensor.name}' has dims {list(tensor.dims)} ({count} values) but "
                                 f"holds {held}: the file is damaged")


def check_weights(model: onnx.ModelProto) -> None:
    """NaN anywhere in a float initialiser, or Inf in an operand a weighted layer multiplies by: relevance
    would be NaN or infinite. (Inf elsewhere is fine: attention masks are often -inf.)"""
    weighted = {i for node in model.graph.node if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
                for i in node.input[1:]}
    for tensor in model.graph.initializer:
        if tensor.data_type not in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
            continue
        values = numpy_helper.to_array(tensor)
        if np.isnan(values).any():
            raise UnsupportedModelError(f"initializer '{tensor.name}' holds {int(np.isnan(values).sum())} NaN values: "
                                        "the model's outputs, and their relevance, would be NaN")
        if tensor.name in weighted and np.isinf(values).any():
            raise UnsupportedModelError(f"the weight '{tensor.name}' holds infinite values: relevance through that "
                                        "layer would be infinite or NaN")


def check_with_onnxruntime(model: onnx.ModelProto, name: str = "the model") -> None:
    """Refuse what onnxruntime would refuse to load (small models through its loader itself)."""
    import onnxruntime as ort
    if byte_size(model) > ORT_CHECK_LIMIT:
        # onnxruntime registers a few ops of its own in the onnx domain (onnxruntime-genai's graphs use them):
        # onnx's checker, which does not know them, checks them as the contrib ops they are
        own = [(node, node.domain if node.HasField("domain") else None) for node in model.graph.node
               if node.domain in ("", "ai.onnx") and node.op_type in ORT_ONNX_DOMAIN_OPS]
        added = bool(own) and not any(o.domain == "com.microsoft" for o in model.opset_import)
        for node, _ in own:
            node.domain = "com.microsoft"
        if added:
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        try:
            # the weights were checked above (check_structure, check_weights); the checker serialises what it is
            # given, a copy of every weight
            onnx.checker.check_model(structure_only(model))
        except Exception as exc:  # noqa: BLE001 - the checker raises several types
            raise ModelLoadError(f"{name} fails onnx's checker: {_first_line(exc)}") from None
        finally:
            for node, domain in own:
                if domain is None:
                    node.ClearField("domain")
                else:
                    node.domain = domain
            if added:
                del model.opset_import[len(model.opset_import) - 1]
        return
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
        raise ModelLoadError(f"onnxruntime refuses to load {name}: {_first_line(exc)}") from None


def is_large(model: onnx.ModelProto) -> bool:
    """Too large for one protobuf (2 GiB): the weights go into an external data file, onnx's checker takes the
    graph alone, onnxruntime loads it from a file."""
    return byte_size(model) > PROTOBUF_LIMIT


def byte_size(model: onnx.ModelProto) -> int:
    """The model's size as one protobuf, to within a few bytes per weight: its structure's serialised size plus
    the bytes its weights hold. protobuf's ByteSize encodes the whole message to count it (9 s for 1.5 GB)."""
    weights = sum(_held_bytes(t) for t in model.graph.initializer)
    return structure_only(model).ByteSize() + weights + sum(t.ByteSize() for t in model.graph.sparse_initializer)


def _held_bytes(tensor: TensorProto) -> int:
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    field = _TYPED_FIELDS.get(tensor.data_type)
    if field is None:   # strings, or a type without values
        return tensor.ByteSize()
    return len(getattr(tensor, field)) * (8 if field in ("double_data", "int64_data", "uint64_data") else 4)


def structure_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its initialisers as typed graph inputs, for onnx's checker, which refuses a protobuf over
    2 GiB in memory: the graph is what it checks, and the weights' bytes are not copied."""
    light = onnx.ModelProto(ir_version=max(model.ir_version, 4))
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph = light.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    listed = {value.name for value in model.graph.input}
    graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                       for t in model.graph.initializer if t.name not in listed)
    return light


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    for prefix in ("[ONNXRuntimeError] :",):
        if text.startswith(prefix):
            text = text.split(":", 3)[-1].strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:400]


def validate(model: onnx.ModelProto, name: str = "the model") -> None:
    check_structure(model, name)
    check_weights(model)
    check_with_onnxruntime(model, name)
