"""What the modified gradient must know about the graph before it is built (RULES.md, "Transformers").

- Normalisers: the 1/sigma of a decomposed LayerNorm or RMSNorm (a Sqrt of a mean of squares plus
  epsilon) is held constant, which makes the norm linear in its input.
- Non-linearity blocks: an element-wise x * h(x) (Erf- or tanh-GELU, SiLU, Mish), found as a Mul whose
  two operands share an element-wise ancestor x, is one non-linearity f(x): it gets the identity rule,
  g_x = g_y * f(x) / x, as a single op would.
- Bilinear products: a MatMul or Mul whose two operands both carry gradient (Q K^T, P V, gate * up).
  AttnLRP gives each operand half (the uniform rule); CP-LRP holds the attention probabilities and the
  gates constant instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto

from ..graph import ForwardGraph

# element-wise ops of one computed operand (the others, if any, constant)
UNARY_NONLINEAR = ("Erf", "Tanh", "Sigmoid", "Relu", "Gelu", "Exp", "Abs", "Softplus", "Softsign", "Elu", "Selu",
                   "Celu", "LeakyRelu", "HardSigmoid", "HardSwish", "Mish", "Sqrt", "Reciprocal", "Log", "Sin",
                   "Cos", "ThresholdedRelu", "Clip", "PRelu", "Pow")
UNARY_LINEAR = ("Neg", "Identity", "Cast", "Dropout")
BINARY_ELEMENTWISE = ("Add", "Sub", "Mul", "Div")
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)


@dataclass
class Analysis:
    sources: list[str]                        # the explained tensors (inputs, or embedding Gather outputs)
    detached: set[str] = field(default_factory=set)       # tensors held constant
    blocks: dict[str, str] = field(default_factory=dict)  # non-linearity block output -> its input x
    bilinear: set[str] = field(default_factory=set)       # nodes whose two operands both carry gradient
    live: set[str] = field(default_factory=set)           # tensors that carry gradient


def analyse(fwd: ForwardGraph, sources: list[str], variant: str) -> Analysis:
    analysis = Analysis(sources=list(sources))
    analysis.detached |= normalisers(fwd)
    live = _live(fwd, sources, analysis.detached)
    ancestry = _elementwise_ancestry(fwd, live)
    for node in fwd.nodes:
        if node.op_type not in ("Mul", "Div", "MatMul") or len(node.input) != 2:
            continue
        a, b = node.input
        if a not in live or b not in live:
            continue
        common = _latest_common(fwd, ancestry.get(a, {a}), ancestry.get(b, {b})) if node.op_type != "MatMul" else None
        if common is not None:
            analysis.blocks[node.output[0]] = common
        else:
            analysis.bilinear.add(node.name)
    if variant == "cp_lrp":
        analysis.detached |= _cp_constants(fwd, analysis, live, ancestry)
        live = _live(fwd, sources, analysis.detached)
        analysis.bilinear = {n.name for n in fwd.nodes if n.name in analysis.bilinear
                             and all(i in live for i in n.input)}
    analysis.live = live
    return analysis


def normalisers(fwd: ForwardGraph) -> set[str]:
    """Outputs of Sqrt(mean(v^2) + eps) (LayerNorm's sigma, RMSNorm's rms) in decomposed norm chains."""
    found = set()
    for node in fwd.nodes:
        if node.op_type != "Sqrt":
            continue
        inner = fwd.producer.get(node.input[0])
        if inner is not None and inner.op_type == "Add":
            computed = [i for i in inner.input if fwd.const(i) is None]
            inner = fwd.producer.get(computed[0]) if len(computed) == 1 else None
        if inner is None or inner.op_type != "ReduceMean":
            continue
        square = fwd.producer.get(inner.input[0])
        if square is None:
            continue
        exponent = fwd.const(square.input[1]) if square.op_type == "Pow" else None
        if (exponent is not None and np.all(exponent == 2)) or (square.op_type == "Mul"
                                                               and square.input[0] == square.input[1]):
            found.add(node.output[0])
    return found


def _live(fwd: ForwardGraph, sources: list[str], detached: set[str]) -> set[str]:
    live = set(sources)
    for node in fwd.nodes:
        if any(i in live and i not in detached for i in node.input if i):
            live.update(o for o in node.output if o and o not in detached
                        and fwd.elem_type(o) in FLOAT_TYPES + (None,))
    return live


def _elementwise_ancestry(fwd: ForwardGraph, live: set[str]) -> dict[str, set[str]]:
    """Per live tensor: itself and the live tensors it is computed from by element-wise ops alone."""
    ancestry: dict[str, set[str]] = {}
    for node in fwd.nodes:
        out = node.output[0] if node.output else ""
        if out not in live:
            continue
        computed = [i for i in node.input if i in live]
        if node.op_type in UNARY_NONLINEAR + UNARY_LINEAR + BINARY_ELEMENTWISE and computed:
            ancestry[out] = {out}.union(*(ancestry.get(i, {i}) for i in computed))
        else:
            ancestry[out] = {out}
    return ancestry


def _latest_common(fwd: ForwardGraph, a: set[str], b: set[str]) -> str | None:
    common = a & b
    if not common:
        return None
    order = {o: k for k, n in enumerate(fwd.nodes) for o in n.output}
    return max(common, key=lambda t: order.get(t, -1))


def _cp_constants(fwd: ForwardGraph, analysis: Analysis, live: set[str], ancestry) -> set[str]:
    """CP-LRP: attention probabilities (Softmax outputs) and gates (the operand of a bilinear Mul computed
    through a non-linearity) are constants."""
    held = {n.output[0] for n in fwd.nodes if n.op_type == "Softmax" and n.output[0] in live}
    for node in fwd.nodes:
        if node.name not in analysis.bilinear or node.op_type != "Mul":
            continue
        nonlinear = [any(fwd.producer[t].op_type in UNARY_NONLINEAR for t in ancestry.get(i, {i})
                         if t in fwd.producer) for i in node.input]
        if nonlinear.count(True) == 1:
            held.add(node.input[nonlinear.index(True)])
    return held
