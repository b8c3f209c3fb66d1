"""Layers that compute on integer activations, as onnxruntime.quantization writes them, put into spans with
float ends.

A dynamically quantized layer (quantize_dynamic) is a chain of five or six nodes:
    DynamicQuantizeLinear(x) -> MatMulInteger / ConvInteger with the integer weight -> Cast -> Mul by
    x_scale * w_scale (-> Add the bias)
A QOperator layer (quantize_static, QuantFormat.QOperator) maps integers to integers: QLinearMatMul,
QLinearConv, QLinearAdd. Neither leaves a float tensor at the layer's input and output for the rules to read.

This pass moves each such layer, unchanged, into a model-local function of the domain onnxlrp.quantized (one
"span") whose input and output are float:
  - a dynamic chain whole (a DynamicQuantizeLinear that several layers share is copied into each);
  - a QOperator op between a QuantizeLinear of its float input and a DequantizeLinear of its output, both on
    the op's own grid, where the float input is the DequantizeLinear of the integers it read: Q(DQ(q)) = q.
Ops that only move integers between spans (MaxPool, Reshape, Flatten, Transpose, ...) run on the dequantized
floats instead: dequantization is element-wise and increasing, so they select and move the same values. An
integer tensor that something else still reads is quantized again from its float values (exactly the same
integers). onnxruntime inlines the functions when it loads the model, so the explainer's forward computes
the model's own integers and logits; the compiler sees one float layer per span (onnxlrp/ops/quantized.py).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

SPAN_DOMAIN = "onnxlrp.quantized"

# QOperator ops: their integer operands, each with the inputs that give its (scale, zero point) grid; every
# one writes its output on the grid of inputs 6 and 7
QOPERATOR_OPERANDS = {("", "QLinearMatMul"): {0: (1, 2)}, ("", "QLinearConv"): {0: (1, 2)},
                      ("com.microsoft", "QLinearAdd"): {0: (1, 2), 3: (4, 5)}}
OUTPUT_GRID = (6, 7)
DYNAMIC_ANCHORS = ("MatMulInteger", "ConvInteger")
# ops that select or move the integers of their first input, and compute the same on their dequantized values
MOVES = ("MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity")


def _domain(node) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def quantized_spans(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    if not any(_domain(n) == "" and n.op_type in DYNAMIC_ANCHORS or (_domain(n), n.op_type) in QOPERATOR_OPERANDS
               for n in graph.node):
        return model
    return _Spans(model).rewrite()


class _Spans:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        graph = model.graph
        self.constants = {t.name: t for t in graph.initializer}
        self.graph_outputs = {o.name for o in graph.output}
        self.producer = {out: node for node in graph.node for out in node.output if out}
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.nodes: list[onnx.NodeProto] = []
        self.functions: list[onnx.FunctionProto] = []
        self.float_view: dict[str, str] = {}             # integer tensor -> a float tensor of its values
        self.grid: dict[str, tuple[str, str]] = {}       # integer tensor -> its (scale, zero point)
        self.gone: set[str] = set()                      # integer tensors whose producer became a span
        self._names = {out for node in graph.node for out in node.output} | {i.name for i in graph.input}

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    # ---- the rewrite ----

    def rewrite(self) -> onnx.ModelProto:
        chains = {}
        for node in self.model.graph.node:
            chain = self._dynamic_chain(node)
            if chain:
                chains[id(chain[-1])] = chain   # emitted where its last node stood: all its inputs exist there
        absorbed = {id(n) for chain in chains.values() for n in chain[2:-1]}
        for node in self.model.graph.node:
            if id(node) in chains:
                self._dynamic_span(chains[id(node)])
            elif id(node) in absorbed:
                continue
            elif (_domain(node), node.op_type) in QOPERATOR_OPERANDS and self._params_constant(node):
                self._qoperator_span(node)
            elif node.op_type in MOVES and _domain(node) == "" and node.input[0] in self.gone:
                self._move(node)
            else:
                self._keep(node)
        for name in self.graph_outputs & self.gone:
            self._requantize(name)
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        del model.graph.node[:]
        model.graph.node.extend(self.nodes)
        model.functions.extend(self.functions)
        if not any(o.domain == SPAN_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(SPAN_DOMAIN, 1))
        return model

    def _only_consumer(self, name: str, op_type: str):
        users = self.consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != op_type or name in self.graph_outputs:
            return None
        return users[0]

    def _dynamic_chain(self, node) -> list | None:
        """[DynamicQuantizeLinear, scale Mul, MatMulInteger / ConvInteger, Cast, Mul (, bias Add)] or None."""
        if _domain(node) != "" or node.op_type not in DYNAMIC_ANCHORS:
            return None
        quantize = self.producer.get(node.input[0])
        if quantize is None or quantize.op_type != "DynamicQuantizeLinear":
            return None
        inputs = list(node.input) + [""] * (4 - len(node.input))
        if inputs[2] not in ("", quantize.output[2]) or inputs[1] not in self.constants or (
                inputs[3] and inputs[3] not in self.constants):
            return None
        cast = self._only_consumer(node.output[0], "Cast")
        mul = cast and self._only_consumer(cast.output[0], "Mul")
        if mul is None:
            return None
        scale = self.producer.get(next(i for i in mul.input if i != cast.output[0]))
        if (scale is None or scale.op_type != "Mul" or quantize.output[1] not in scale.input
                or not any(i in self.constants for i in scale.input)):
            return None
        chain = [quantize, scale, node, cast, mul]
        add = self._only_consumer(mul.output[0], "Add")
        if add is not None and any(i in self.constants for i in add.input):
            chain.append(add)
        return chain

    def _dynamic_span(self, chain: list) -> None:
        x = chain[0].input[0]
        self._span(chain[2], [self._float(x)], [x], chain, chain[-1].output[0])

    def _params_constant(self, node) -> bool:
        operands = QOPERATOR_OPERANDS[(_domain(node), node.op_type)]
        return all(not name or name in self.constants for i, name in enumerate(node.input) if i not in operands)

    def _qoperator_span(self, node) -> None:
        """Q(x_float) -> the op -> DQ(y) in one function; computed operands come in as floats."""
        operands = QOPERATOR_OPERANDS[(_domain(node), node.op_type)]
        body, outer, formal = [], [], []
        anchor = onnx.NodeProto()
        anchor.CopyFrom(node)
        for i, (scale, zero) in operands.items():
            q = node.input[i]
            if q in self.constants:
                continue
            anchor.input[i] = f"{q}__requantized"
            if f"{q}__float" in formal:    # the same tensor twice (x + x)
                continue
            grid = (node.input[scale], node.input[zero])
            outer.append(self._float(q, grid))
            formal.append(f"{q}__float")
            body.append(helper.make_node("QuantizeLinear", [formal[-1], *grid], [anchor.input[i]]))
        y = node.output[0]
        anchor.output[0] = f"{y}__integers"
        out = self.fresh(f"{y}__float")
        body += [anchor, helper.make_node("DequantizeLinear", [anchor.output[0], *self._grid_of(node)], [out])]
        self._span(node, outer, formal, body, out)
        self.float_view[y], self.grid[y] = out, self._grid_of(node)
        self.gone.add(y)

    def _grid_of(self, node) -> tuple[str, str]:
        return node.input[OUTPUT_GRID[0]], node.input[OUTPUT_GRID[1]]

    def _span(self, anchor, outer: list[str], formal: list[str], body: list, output: str) -> None:
        """One function call: the computed inputs (outer, named `formal` inside), then every constant the body
        reads, in order."""
        constants = []
        for node in body:
            for name in node.input:
                if name in self.constants and name not in constants:
                    constants.append(name)
        name = f"{anchor.op_type}_{len(self.functions)}"
        imports = [helper.make_opsetid(o.domain, o.version) for o in self.model.opset_import
                   if o.domain != SPAN_DOMAIN]
        self.functions.append(helper.make_function(SPAN_DOMAIN, name, formal + constants, [output], body, imports))
        self.nodes.append(helper.make_node(name, outer + constants, [output], name=anchor.name or output,
                                           domain=SPAN_DOMAIN))

    def _move(self, node) -> None:
        moved = onnx.NodeProto()
        moved.CopyFrom(node)
        q = node.input[0]
        moved.input[0] = self.float_view[q]
        y = node.output[0]
        moved.output[0] = self.fresh(f"{y}__float")
        del moved.output[1:]
        self.nodes.append(moved)
        self.float_view[y], self.grid[y] = moved.output[0], self.grid[q]
        self.gone.add(y)

    def _keep(self, node) -> None:
        if node.op_type == "DequantizeLinear" and _domain(node) == "" and node.input[0] in self.gone and len(
                node.input) >= 2 and self._same_grid(self.grid[node.input[0]], tuple(node.input[1:3])):
            # DQ of integers that a span computed from its float output: that float output
            self.nodes.append(helper.make_node("Identity", [self.float_view[node.input[0]]], list(node.output),
                                               name=node.name))
            return
        for name in node.input:
            if name in self.gone:
                self._requantize(name)
        self.nodes.append(node)

    def _requantize(self, name: str) -> None:
        """The integers of `name` again, from its float values (the same integers: Q(DQ(q)) = q)."""
        if name not in self.gone:
            return
        self.nodes.append(helper.make_node("QuantizeLinear", [self.float_view[name], *self.grid[name]], [name],
                                           name=self.fresh(f"{name}__requantize")))
        self.gone.discard(name)

    def _float(self, name: str, grid: tuple[str, str] | None = None) -> str:
        """A float tensor holding the values of `name` on `grid`: itself if float, else its dequantization."""
        if grid is None:     # a DynamicQuantizeLinear's float input
            return name
        if name in self.float_view:
            if self._same_grid(self.grid[name], grid):
                return self.float_view[name]
            self._requantize(name)   # read on another grid than it was written on: dequantize its integers anew
        out = self.fresh(f"{name}__float")
        self.nodes.append(helper.make_node("DequantizeLinear", [name, *grid], [out], name=out))
        if name not in self.float_view:
            self.float_view[name], self.grid[name] = out, grid
        return out

    def _same_grid(self, a: tuple[str, str], b: tuple[str, str]) -> bool:
        if a == b:
            return True
        values = [[numpy_helper.to_array(self.constants[n]) if n in self.constants else None for n in g] for g in (a, b)]
        return all(u is not None and v is not None and np.array_equal(u, v) for u, v in zip(*values))
