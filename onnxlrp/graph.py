"""Read-only index over a canonical forward graph: producers, consumers, constants, shapes."""
from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import MutableMapping

import numpy as np
import onnx
from onnx import numpy_helper

# ops whose output is >= 0 whatever their input (lets rules skip their x- terms)
NONNEGATIVE_OPS = ("Relu", "Sigmoid", "Softmax", "HardSigmoid", "Abs", "Softplus")
# ops that keep non-negativity of their (first) input
NONNEGATIVE_PRESERVING = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten",
                          "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Concat",
                          "Split", "Slice", "Pad")


def dequantize(node: onnx.NodeProto, inputs: list) -> np.ndarray:
    """DequantizeLinear's float32 values: (x - zero_point) * scale, per tensor, per axis or per block."""
    x, scale = inputs[0].astype(np.float32), np.asarray(inputs[1], dtype=np.float32)
    zero = np.asarray(inputs[2], dtype=np.float32) if len(inputs) > 2 and inputs[2] is not None else np.float32(0)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if scale.ndim == 0:
        return (x - zero) * scale
    axis = attrs.get("axis", 1) % x.ndim
    block = attrs.get("block_size", 0)
    if block:
        scale = np.repeat(scale, block, axis=axis).take(range(x.shape[axis]), axis=axis)
        zero = np.repeat(zero, block, axis=axis).take(range(x.shape[axis]), axis=axis) if zero.ndim else zero
        return (x - zero) * scale
    shape = [1] * x.ndim
    shape[axis] = -1
    return (x - (zero.reshape(shape) if zero.ndim else zero)) * scale.reshape(shape)


class Constants(MutableMapping):
    """name -> values of a model's initialisers, read from the proto when asked and kept only while someone
    holds them: every weight as a numpy copy beside the proto doubled a compile's memory (an LLM's GBs), and
    most weights are never read (a rule that leaves W as it is names the forward's initialiser). Entries set
    here (dequantized weights) are kept."""

    def __init__(self, initializers):
        self._tensors = {t.name: t for t in initializers}
        self._set: dict[str, np.ndarray] = {}
        self._loaded = weakref.WeakValueDictionary()

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._set:
            return self._set[name]
        values = self._loaded.get(name)
        if values is None:
            values = numpy_helper.to_array(self._tensors[name])
            self._loaded[name] = values
        return values

    def __setitem__(self, name: str, values: np.ndarray) -> None:
        self._set[name] = values

    def __delitem__(self, name: str) -> None:
        self._set.pop(name, None)
        self._tensors.pop(name, None)

    def __contains__(self, name) -> bool:
        return name in self._set or name in self._tensors

    def __iter__(self):
        yield from self._set
        yield from (name for name in self._tensors if name not in self._set)

    def __len__(self) -> int:
        return len(self._set) + sum(1 for name in self._tensors if name not in self._set)

    def shape(self, name: str) -> tuple:
        return tuple(self._set[name].shape) if name in self._set else tuple(self._tensors[name].dims)

    def elem_type(self, name: str) -> int:
        if name in self._set:
            return onnx.helper.np_dtype_to_tensor_dtype(self._set[name].dtype)
        return self._tensors[name].data_type


class ForwardGraph:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        graph = model.graph
        self.nodes = list(graph.node)
        self.constants = Constants(graph.initializer)
        for node in self.nodes:   # weights a QDQ model dequantizes: their values, for the rules (the forward
            if node.op_type == "DequantizeLinear" and all(i in self.constants for i in node.input if i):  # keeps its
                self.constants[node.output[0]] = dequantize(node, [self.constants[i] if i else None   # integers)
                                                                   for i in node.input])
        self.node_named: dict[str, onnx.NodeProto] = {node.name: node for node in self.nodes}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
        self.value_infos = {}
        for value in list(graph.input) + list(graph.value_info) + list(graph.output):
            self.value_infos[value.name] = value
        self.input_names = [v.name for v in graph.input if v.name not in self.constants]
        self.output_names = [v.name for v in graph.output]
        self._nonneg: dict[str, bool] = {}
        self._ancestors: dict[str, set[str]] = {}

    def const(self, name: str) -> np.ndarray | None:
        return self.constants.get(name)

    def shape(self, name: str) -> tuple | None:
        """Dims as ints, or None for a dynamic dim (e.g. the batch); None if the rank is unknown."""
        value = self.value_infos.get(name)
        if value is None:
            if name in self.constants:
                return self.constants.shape(name)
            return None
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            return None
        return tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)

    def same_first_dim(self, a: str, b: str) -> bool:
        """Do tensors a and b provably share their first dim (the same size, or the same symbolic name)?"""
        dims = []
        for name in (a, b):
            value = self.value_infos.get(name)
            shape = value.type.tensor_type.shape if value is not None else None
            if shape is None or not shape.dim:
                return False
            dims.append(shape.dim[0])
        first, second = dims
        if first.HasField("dim_value") and second.HasField("dim_value"):
            return first.dim_value == second.dim_value > 0
        return bool(first.dim_param) and first.dim_param == second.dim_param

    def is_batch(self, name: str, axis: int) -> bool:
        """Is this axis of the tensor the model's (dynamic) batch: axis 0 named by the batch dim?"""
        from .canonical.batch import BATCH_DIM
        value = self.value_infos.get(name)
        shape = value.type.tensor_type.shape if value is not None else None
        return axis == 0 and shape is not None and len(shape.dim) > 0 and shape.dim[0].dim_param == BATCH_DIM

    def elem_type(self, name: str) -> int | None:
        value = self.value_infos.get(name)
        if value is None:
            if name in self.constants:
                return self.constants.elem_type(name)
            return None
        return value.type.tensor_type.elem_type

    def descendants(self, sources: list[str], skip_ops: tuple[str, ...] = ()) -> set[str]:
        """Tensor names that depend on any of `sources` (the sources included), not through ops in `skip_ops`."""
        live = set(sources)
        for node in self.nodes:  # nodes are in topological order
            if node.op_type not in skip_ops and any(i in live for i in node.input if i):
                live.update(o for o in node.output if o)
        return live

    def ancestors(self, target: str) -> set[str]:
        """Tensor names `target` depends on (itself included)."""
        if target in self._ancestors:
            return self._ancestors[target]
        needed = {target}
        for node in reversed(self.nodes):
            if any(o in needed for o in node.output):
                needed.update(i for i in node.input if i)
        self._ancestors[target] = needed
        return needed

    def is_nonnegative(self, name: str) -> bool:
        if name in self._nonneg:
            return self._nonneg[name]
        result = False
        if name in self.constants:
            result = bool(np.all(self.constants[name] >= 0))
        elif name in self.producer:
            node = self.producer[name]
            if node.op_type in NONNEGATIVE_OPS:
                result = True
            elif node.op_type == "Clip":
                low = self.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
                result = low is not None and float(low) >= 0
            elif node.op_type == "Concat":
                result = all(self.is_nonnegative(i) for i in node.input)
            elif node.op_type in NONNEGATIVE_PRESERVING:
                result = self.is_nonnegative(node.input[0])
        self._nonneg[name] = result
        return result
