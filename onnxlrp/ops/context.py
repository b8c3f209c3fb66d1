"""What a handler works with: a builder for the emitted nodes, and the forward node in context.

A handler speaks in the terms of the formulas: forward input i (`ctx.x(i)`), forward output j
(`ctx.y(j)`), the relevance (or modified gradient) at output j (`ctx.R(j)`, `ctx.g(j)`), and returns what it
sends to each input, None where nothing goes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import UnsupportedOpError
from ..graph import ForwardGraph
from ..rules import Rule


class Builder:
    """Collects relevance nodes and initialisers with deterministic names `lrp/<forward node>/<k>`."""

    def __init__(self, dtype=np.float32):
        self.dtype = np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.scope = "head"
        self._counts: dict[str, int] = {}
        self._cache: dict[tuple, str] = {}

    def set_scope(self, scope: str) -> None:
        self.scope = scope

    def fresh(self, hint: str = "") -> str:
        k = self._counts.get(self.scope, 0)
        self._counts[self.scope] = k + 1
        return f"lrp/{self.scope}/{k}" + (f"_{hint}" if hint else "")

    def const(self, array, hint: str = "") -> str:
        arr = np.asarray(array)
        if arr.dtype.kind == "f":
            arr = arr.astype(self.dtype)
        name = self.fresh(hint or "const")
        self.initializers.append(numpy_helper.from_array(np.require(arr, requirements="C"), name))  # 0-d stays 0-d
        return name

    def scalar(self, value: float) -> str:
        """A float scalar of the model's dtype, shared across the graph."""
        key = ("scalar", float(value))
        if key not in self._cache:
            name = f"lrp/const/{float(value)!r}"
            self.initializers.append(numpy_helper.from_array(np.array(value, dtype=self.dtype), name))
            self._cache[key] = name
        return self._cache[key]

    def ints(self, values) -> str:
        """A shared int64 1-D constant (axes, shapes, split sizes)."""
        values = tuple(int(v) for v in values)
        key = ("ints",) + values
        if key not in self._cache:
            name = "lrp/const/int64_" + "_".join(str(v) for v in values).replace("-", "m")
            self.initializers.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
            self._cache[key] = name
        return self._cache[key]

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, hint: str = "", output: str | None = None, **attrs):
        """Emit one node; its output(s) named after it, or `output` (a graph output's name)."""
        name = self.fresh(hint or op_type.lower())
        outputs = [output or name] if n_out == 1 else [f"{name}:{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=name, **attrs))
        return outputs[0] if n_out == 1 else outputs

    # ---- small vocabulary shared by the handlers ----

    def stabilize(self, u: str, eps: float) -> str:
        """u + eps * sign(u), with sign(0) = +1."""
        if eps == 0:
            return u
        # three passes over u: the comparison, the signed eps (scalars broadcast), the sum
        nonneg = self.op("GreaterOrEqual", [u, self.scalar(0.0)])
        signed_eps = self.op("Where", [nonneg, self.scalar(eps), self.scalar(-eps)])
        return self.op("Add", [u, signed_eps], hint="stab")

    def divide(self, relevance: str, z: str, eps: float) -> str:
        """R / stab(z). Unstabilised (eps = 0), an output with z = 0 passes nothing on instead of 0/0 = NaN."""
        if eps == 0:
            is_zero = self.op("Equal", [z, self.scalar(0.0)])
            return self.op("Where", [is_zero, self.scalar(0.0), self.op("Div", [relevance, z])])
        return self.op("Div", [relevance, self.stabilize(z, eps)])

    def add_all(self, terms: list[str]) -> str:
        if len(terms) == 1:
            return terms[0]
        return self.op("Sum", terms)

    def zeros_like(self, like: str) -> str:
        zero = helper.make_tensor("value", onnx.TensorProto.FLOAT, [1], [0.0])
        return self.op("ConstantOfShape", [self.op("Shape", [like])], value=zero)

    def reshape_like(self, tensor: str, like: str) -> str:
        return self.op("Reshape", [tensor, self.op("Shape", [like])])

    def positive_part(self, x: str) -> str:
        return self.op("Relu", [x])

    def negative_part(self, x: str) -> str:
        return self.op("Min", [x, self.scalar(0.0)])



@dataclass
class Context:
    """One forward node in context, for the handlers of its family (onnxlrp.ops.registry)."""

    node: onnx.NodeProto          # the forward node as it goes into the explainer (a handler may add outputs)
    graph: ForwardGraph
    b: Builder
    rule: Rule | None             # from the composite (or a declaration); None for ops without a rule
    signals: list[str | None]     # per output: relevance R or modified gradient g, in the handler's form
    carries: list[bool]           # per input: does relevance flow back into it?
    kind: str | None = None
    opset: int = 17
    batch_fixed: bool = False     # the model keeps its exported batch size: axis 0 is not necessarily the batch
    only_where_positive: bool = False   # relevance at the output is 0 wherever the output is <= 0
    relu_of_output: str | None = None   # then: a forward ReLU of the output, if the graph has one
    form: str = "R"               # what the signals are: relevance "R" or modified gradient "g" (compiler/signals.py)
    extra: dict = field(default_factory=dict)

    # ---- the forward node ----

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def op(self) -> str:
        return self.node.op_type

    def x(self, i: int = 0) -> str:
        return self.node.input[i]

    def y(self, j: int = 0) -> str:
        return self.node.output[j]

    def attr(self, key: str, default=None):
        for attribute in self.node.attribute:
            if attribute.name == key:
                value = helper.get_attribute_value(attribute)
                return value.decode() if isinstance(value, bytes) else value
        return default

    def ensure_output(self, j: int, hint: str) -> str:
        """Make the forward node produce its optional output j (e.g. MaxPool's indices) and name it."""
        while len(self.node.output) <= j:
            self.node.output.append("")
        if not self.node.output[j]:
            self.node.output[j] = f"lrp/{self.node.name}/{hint}"
        return self.node.output[j]

    def const(self, i: int) -> np.ndarray | None:
        if i >= len(self.node.input) or not self.node.input[i]:
            return None
        return self.graph.const(self.node.input[i])

    def shape(self, name: str) -> tuple | None:
        return self.graph.shape(name)

    def rank(self, name: str) -> int | None:
        shape = self.graph.shape(name)
        return None if shape is None else len(shape)

    def static_shape(self, name: str) -> tuple:
        """The shape of `name`, which must be static apart from the batch (else a clear error)."""
        shape = self.graph.shape(name)
        if shape is None or any(d is None for d in shape[1:]):
            raise UnsupportedOpError(self.op, self.name, f"the shape {shape} of '{name}' is not static apart "
                                     "from the batch; give the model a fixed input size")
        return tuple(shape)

    # ---- what arrives at the outputs ----

    def R(self, j: int = 0) -> str | None:  # noqa: N802 - the formulas' name
        return self.signals[j]

    def g(self, j: int = 0) -> str | None:
        return self.signals[j]

    def carries_relevance(self, i: int) -> bool:
        return i < len(self.carries) and self.carries[i]

    def none(self) -> list[None]:
        return [None] * len(self.node.input)

    def only(self, i: int, value: str) -> list[str | None]:
        """`value` for input i, nothing for the others."""
        result = self.none()
        result[i] = value
        return result

    # ---- shapes of what goes back ----

    def reshape_back(self, tensor: str, j: int = 0, i: int = 0) -> str:
        """A tensor shaped like output j reshaped to the shape of input i. Where both share the batch and the
        input's other dims are static, the target is the constant [0, d1, ...]: shape inference then keeps
        the batch's name, which onnxruntime's NCHWc layout pass needs to keep the Mul and Add below it in
        its blocked layout (a Shape-fed Reshape loses every dim and costs two reorders per layer)."""
        x, y = self.x(i), self.y(j)
        shape = self.shape(x)
        if shape and all(d is not None for d in shape[1:]) and self.graph.same_first_dim(x, y):
            return self.b.op("Reshape", [tensor, self.b.ints([0, *shape[1:]])])
        if shape and sum(d is None for d in shape) == 1 and all(d is None or d > 0 for d in shape):
            # one free dim (a flattened batch x sequence): -1 there, and no read of x, which would keep x
            # alive until the relevance pass (or have the low-memory form recompute it for its shape alone)
            return self.b.op("Reshape", [tensor, self.b.ints([-1 if d is None else d for d in shape])])
        return self.b.reshape_like(tensor, x)

    def expand_target(self, like: str) -> str:
        """The shape to Expand a batch-shaped tensor to `like`'s: constant [1, d1, ...] where the sample shape is
        static (shape inference then keeps the batch, see reshape_back), else read at run time."""
        shape = self.shape(like)
        if shape and all(d is not None for d in shape[1:]):
            return self.b.ints([1, *shape[1:]])
        return self.b.op("Shape", [like])

    def unbroadcast(self, tensor: str, i: int) -> str:
        """A tensor shaped like the (broadcast) output summed back to the shape of input i (numpy
        broadcasting). Axes where input i is statically 1 and the output is not are summed; a dim unknown on
        either side is taken to be the same size (broadcasting a computed tensor along a dynamic axis is not
        a pattern exporters emit)."""
        x_shape, y_shape = self.shape(self.x(i)), self.shape(self.y())
        if x_shape is None or y_shape is None:
            if x_shape is not None and y_shape is None and all(d is not None and d > 1 for d in x_shape):
                return tensor
            raise UnsupportedOpError(self.op, self.name, f"the rank of '{self.x(i)}' or of its output is unknown "
                                     "after shape inference; export the model with static ranks")
        lead = len(y_shape) - len(x_shape)
        b = self.b
        if lead:
            tensor = b.op("ReduceSum", [tensor, b.ints(list(range(lead)))], keepdims=0)
        axes = [k for k, (dx, dy) in enumerate(zip(x_shape, y_shape[lead:])) if dx == 1 and dy != 1]
        if axes:
            tensor = b.op("ReduceSum", [tensor, b.ints(axes)], keepdims=1)
        return tensor

    def divide_by_output(self, relevance: str, eps: float) -> str:
        """R / stab(y) for this node's own output y. Where R is 0 wherever y <= 0 and the forward graph
        already holds relu(y), relu(y) + eps equals stab(y) wherever R is not 0: one pass instead of three."""
        if eps > 0 and self.only_where_positive and self.relu_of_output:
            stabilized = self.b.op("Add", [self.relu_of_output, self.b.scalar(eps)], hint="stab_relu")
            return self.b.op("Div", [relevance, stabilized])
        return self.b.divide(relevance, self.y(), eps)
