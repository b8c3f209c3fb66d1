"""What a gradient handler works with: the forward node, the modified gradient at its outputs, and which
of its inputs carry gradient back (depend on an explained input and are not held constant).

A handler returns, per forward input, the gradient it sends there (None where nothing goes)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..graph import ForwardGraph
from ..ops.context import Builder, NodeAttributes
from .patterns import Analysis


@dataclass
class GradContext(NodeAttributes):
    node: onnx.NodeProto
    graph: ForwardGraph
    b: Builder
    g_out: list[str | None]
    carries: list[bool]           # per input: does gradient flow back into it?
    analysis: Analysis
    opset: int = 17
    extra: dict = field(default_factory=dict)

    @property
    def op(self) -> str:
        return self.node.op_type

    def g(self, j: int = 0) -> str | None:
        return self.g_out[j]

    def carries_gradient(self, i: int) -> bool:
        return i < len(self.carries) and self.carries[i]

    def none(self) -> list[None]:
        return [None] * len(self.node.input)

    def only(self, i: int, gradient: str) -> list[str | None]:
        """`gradient` for input i, nothing for the others."""
        result = self.none()
        result[i] = gradient
        return result

    def const(self, i: int) -> np.ndarray | None:
        if i >= len(self.node.input) or not self.node.input[i]:
            return None
        return self.graph.const(self.node.input[i])

    def shape(self, name: str) -> tuple | None:
        return self.graph.shape(name)

    def rank(self, name: str) -> int | None:
        shape = self.graph.shape(name)
        return None if shape is None else len(shape)

    def unbroadcast(self, gradient: str, i: int) -> str:
        """The gradient of the broadcast result summed back to the shape of input i (numpy broadcasting).
        Axes where input i is statically 1 and the output is not are summed; a dim unknown on either side
        is taken to be the same size (broadcasting a computed tensor along a dynamic axis is not a
        pattern exporters emit)."""
        x_shape, y_shape = self.shape(self.x(i)), self.shape(self.y())
        if x_shape is None or y_shape is None:
            if x_shape is not None and y_shape is None and all(d is not None and d > 1 for d in x_shape):
                return gradient
            raise _unknown_rank(self, i)
        lead = len(y_shape) - len(x_shape)
        b = self.b
        if lead:
            gradient = b.op("ReduceSum", [gradient, b.ints(list(range(lead)))], keepdims=0)
        axes = [k for k, (dx, dy) in enumerate(zip(x_shape, y_shape[lead:])) if dx == 1 and dy != 1]
        if axes:
            gradient = b.op("ReduceSum", [gradient, b.ints(axes)], keepdims=1)
        return gradient


def _unknown_rank(ctx: GradContext, i: int):
    from ..errors import UnsupportedOpError
    return UnsupportedOpError(ctx.op, ctx.name, f"the rank of '{ctx.x(i)}' or of its output is unknown after "
                              "shape inference; export the model with static ranks")
