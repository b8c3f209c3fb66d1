"""Loading and saving ONNX models: paths or ModelProto in, atomic writes out."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from .errors import ModelLoadError
from .files import as_if_created
from .validate import check_external_data, is_large, validate


def load_model(model: str | os.PathLike | onnx.ModelProto, check: bool = True) -> onnx.ModelProto:
    """Return a ModelProto with external data loaded; never modifies the caller's object or file.

    check: refuse a broken or hostile model with one clear line (onnxlrp.validate): done for files
    always, and for a ModelProto unless the caller checked it already."""
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        if check:
            validate(copy)
        return copy
    path = Path(model)
    if not path.exists():
        raise ModelLoadError(f"model file '{path}' does not exist")
    if path.is_dir():
        raise ModelLoadError(f"'{path}' is a folder; give the path of an .onnx file")
    if not path.is_file():
        raise ModelLoadError(f"'{path}' is not a regular file; give the path of an .onnx file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"'{path}' is empty: is it an ONNX model?")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types
        raise ModelLoadError(
            f"cannot read '{path}' as an ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'truncated or corrupt file'})"
        ) from None
    if len(proto.graph.node) == 0:
        raise ModelLoadError(f"'{path}' holds no graph nodes: is it an ONNX model?")
    if any(True for _ in _external_tensors(proto)):
        check_external_data(proto, path.parent)
        try:
            onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"cannot read the external data of '{path}' ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    validate(proto, f"'{path.name}'")
    return proto


def save_model(model: onnx.ModelProto, path: str | os.PathLike, external_data: bool | None = None) -> Path:
    """Write `model` to `path` atomically (temporary file in the same folder, then rename).

    With external_data (by default: for models over the 2 GB protobuf limit) the weights go into
    `<name>.data` beside it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    large = is_large(model) if external_data is None else external_data
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if large:
            data_name = path.name + ".data"
            tmp_data = path.parent / (tmp.name + ".data")
            write_with_external_data(model, tmp, tmp_data, location=data_name)
            as_if_created(tmp_data)
            os.replace(tmp_data, path.parent / data_name)
        else:
            onnx.save_model(model, str(tmp))
        as_if_created(tmp)
        os.replace(tmp, path)
    finally:
        for left in (tmp, path.parent / (tmp.name + ".data")):
            if left.exists():
                left.unlink()
    return path


EXTERNAL_MIN_BYTES = 1024   # weights from this size go into the data file
_PAGE = 4096                # data offsets page-aligned: onnxruntime maps such weights instead of copying them


def write_with_external_data(model: onnx.ModelProto, path: Path, data_path: Path, location: str) -> None:
    """Write `model` to `path` with its weights in `data_path` (which the model names `location`, relative to
    its folder). The proto is left as it was: onnx.save_model's external data moves the weights out of the
    proto it is given, and putting them back costs their size again."""
    light = onnx.ModelProto()
    _copy_fields(model, light, skip="graph")
    _copy_fields(model.graph, light.graph, skip="initializer")
    with open(data_path, "wb") as data:
        for tensor in model.graph.initializer:
            entry = light.graph.initializer.add()
            raw = tensor.raw_data if tensor.HasField("raw_data") else b""
            if len(raw) < EXTERNAL_MIN_BYTES:
                entry.CopyFrom(tensor)
                continue
            entry.name, entry.data_type, entry.doc_string = tensor.name, tensor.data_type, tensor.doc_string
            entry.dims.extend(tensor.dims)
            data.write(bytes(-data.tell() % _PAGE))
            offset = data.tell()
            data.write(raw)
            entry.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(raw)))):
                entry.external_data.add(key=key, value=value)
    onnx.save_model(light, str(path))


def _copy_fields(source, target, skip: str) -> None:
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(target, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _external_tensors(model: onnx.ModelProto):
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor


def free_input_dims(model: onnx.ModelProto) -> list[str]:
    """The graph inputs (not initialisers) with a non-batch dim that is free (named or unknown)."""
    constants = {t.name for t in model.graph.initializer}
    free = []
    for value in model.graph.input:
        if value.name in constants or not value.type.HasField("tensor_type"):
            continue
        dims = value.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in list(dims)[1:]):
            free.append(value.name)
    return free


def with_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple]) -> onnx.ModelProto:
    """A copy of `model` whose inputs have these non-batch dims (the batch stays free)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for value in copy.graph.input:
        if value.name not in shapes:
            continue
        dims = value.type.tensor_type.shape.dim
        wanted = shapes[value.name]
        if len(wanted) != len(dims) - 1:
            from .errors import InputError
            raise InputError(f"input '{value.name}' has rank {len(dims)}; got a sample of shape {list(wanted)}")
        for dim, size in zip(list(dims)[1:], wanted):
            dim.Clear()
            dim.dim_value = int(size)
    return copy
