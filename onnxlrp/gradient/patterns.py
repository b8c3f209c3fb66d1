"""What the modified gradient must know about the graph before it is built (docs/rules.md, "Transformers").

- Normalisers: the 1/sigma of a decomposed LayerNorm or RMSNorm (a Sqrt of a mean of squares plus
  epsilon) is held constant, which makes the norm linear in its input.
- Non-linearity blocks: an element-wise x * h(x) (Erf- or tanh-GELU, SiLU, Mish), found as a Mul whose
  two operands share an element-wise ancestor x, is one non-linearity f(x): it gets the identity rule,
  g_x = g_y * f(x) / x, as a single op would.
- Bilinear products: a MatMul or Mul whose two operands both carry gradient (Q K^T, P V), and gates (a
  bilinear Mul whose one operand went through a non-linearity: gate * up). AttnLRP gives each operand
  half (the uniform rule); CP-LRP holds the attention probabilities and the gates constant instead.

Every such node, and every weighted layer, is a Layer of its kind ("dense", "conv", "softmax",
"bilinear", "gate", "nonlinear", "norm") whose rule the composite gives (composites.AttnLRP).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from onnx import TensorProto

from .. import rules as R
from ..graph import ForwardGraph

# element-wise ops of one computed operand (the others, if any, constant)
UNARY_NONLINEAR = ("Erf", "Tanh", "Sigmoid", "Relu", "Gelu", "Exp", "Abs", "Softplus", "Softsign", "Elu", "Selu",
                   "Celu", "LeakyRelu", "HardSigmoid", "HardSwish", "Mish", "Sqrt", "Reciprocal", "Log", "Sin",
                   "Cos", "ThresholdedRelu", "Clip", "PRelu", "Pow")
UNARY_LINEAR = ("Neg", "Identity", "Cast", "Dropout")
BINARY_ELEMENTWISE = ("Add", "Sub", "Mul", "Div")
# single ops that get the identity rule (the others of UNARY_NONLINEAR only occur inside blocks and norms)
NONLINEAR_OPS = tuple(op for op in UNARY_NONLINEAR if op not in ("Sqrt", "Reciprocal", "Log", "Exp", "Pow")) + \
    ("Silu", "Swish", "QuickGelu")
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)


@dataclass
class Analysis:
    sources: list[str]                        # the explained tensors (inputs, or embedding Gather outputs)
    detached: set[str] = field(default_factory=set)       # tensors held constant
    blocks: dict[str, str] = field(default_factory=dict)  # non-linearity block output -> its input x
    bilinear: dict[str, float] = field(default_factory=dict)  # node -> share of each operand (uniform rule)
    live: set[str] = field(default_factory=set)           # tensors that carry gradient
    layers: list = field(default_factory=list)            # (Layer, rule) of every node a rule was asked for
    rules: dict = field(default_factory=dict)             # node -> its rule, from `layers`


WEIGHTED_KINDS = {"Gemm": "dense", "MatMul": "dense", "Conv": "conv"}
# what each kind of node accepts (docs/rules.md, "Transformers")
ACCEPTED = {"softmax": (R.Norm, R.Constant), "bilinear": (R.UniformShare,), "gate": (R.UniformShare, R.Constant),
            "nonlinear": (R.Pass,), "norm": (R.Norm,)}


def analyse(fwd: ForwardGraph, sources: list[str], rule_for: Callable) -> Analysis:
    """rule_for(layer) -> Rule: the composite's choice for each node of a kind that has one."""
    analysis = Analysis(sources=list(sources))
    sigmas = normalisers(fwd)
    analysis.detached |= sigmas
    live = _live(fwd, sources, analysis.detached)
    ancestry = _elementwise_ancestry(fwd, live)
    kinds: dict[str, str] = {}   # node -> kind
    gates: dict[str, int] = {}   # gate node -> index of its gate operand
    for node in fwd.nodes:
        computed = [i for i in node.input if i in live]
        if not computed or not node.output or node.output[0] not in live:
            continue
        if node.op_type in ("Mul", "Div", "MatMul") and len(node.input) == 2 and len(computed) == 2:
            common = _latest_common(fwd, ancestry.get(node.input[0], {node.input[0]}),
                                    ancestry.get(node.input[1], {node.input[1]})) if node.op_type != "MatMul" else None
            if common is not None:
                analysis.blocks[node.output[0]] = common
                kinds[node.name] = "nonlinear"
                continue
            nonlinear = [any(fwd.producer[t].op_type in UNARY_NONLINEAR for t in ancestry.get(i, {i})
                             if t in fwd.producer) for i in node.input]
            if node.op_type == "Mul" and nonlinear.count(True) == 1:
                kinds[node.name], gates[node.name] = "gate", nonlinear.index(True)
            else:
                kinds[node.name] = "bilinear"
        elif node.op_type == "Softmax":
            kinds[node.name] = "softmax"
        elif node.op_type == "LayerNormalization" or (node.op_type == "Div" and node.input[1] in sigmas) or \
                (node.op_type == "Mul" and any(_from_sigma(fwd, i, sigmas) for i in node.input)):
            kinds[node.name] = "norm"
        elif node.op_type in NONLINEAR_OPS:
            kinds[node.name] = "nonlinear"
        elif node.op_type in WEIGHTED_KINDS and len(computed) == 1:
            kinds[node.name] = WEIGHTED_KINDS[node.op_type]
    analysis.layers = _ask(fwd, kinds, rule_for)
    analysis.rules = {layer.name: rule for layer, rule in analysis.layers}
    for layer, rule in analysis.layers:
        node = fwd.node_named[layer.name]
        if layer.kind == "softmax" and isinstance(rule, R.Constant):
            analysis.detached.add(node.output[0])
        elif layer.kind == "gate" and isinstance(rule, R.Constant):
            analysis.detached.add(node.input[gates[node.name]])
        elif layer.kind in ("gate", "bilinear"):
            analysis.bilinear[node.name] = rule.share
    live = _live(fwd, sources, analysis.detached)
    analysis.bilinear = {name: share for name, share in analysis.bilinear.items()
                         if all(i in live for i in fwd.node_named[name].input)}
    analysis.live = live
    return analysis


def _ask(fwd: ForwardGraph, kinds: dict[str, str], rule_for: Callable) -> list:
    """A Layer per node of a kind, weighted ones numbered in execution order as for CNNs; each with the
    composite's rule, checked against what its kind accepts."""
    from ..composites import Layer
    from ..errors import UnsupportedModelError
    weighted = [n for n in fwd.nodes if kinds.get(n.name) in ("dense", "conv")]
    convs = [n.name for n in weighted if kinds[n.name] == "conv"]
    index = {n.name: k for k, n in enumerate(weighted)}
    result = []
    for node in fwd.nodes:
        kind = kinds.get(node.name)
        if kind is None:
            continue
        layer = Layer(name=node.name, op_type=node.op_type, kind=kind, index=index.get(node.name, -1),
                      count=len(weighted), conv_index=convs.index(node.name) if node.name in convs else None)
        rule = rule_for(layer)
        accepted = ACCEPTED.get(kind)
        if accepted is not None and not isinstance(rule, accepted):
            raise UnsupportedModelError(f"node '{node.name}' ({node.op_type}) is a '{kind}' block, whose rule is one of "
                                        f"{', '.join('rules.' + a.__name__ + '()' for a in accepted)}; got {rule!r}")
        result.append((layer, rule))
    return result


def _from_sigma(fwd: ForwardGraph, tensor: str, sigmas: set[str]) -> bool:
    """Is `tensor` 1 / sigma (a Reciprocal of a normaliser)?"""
    node = fwd.producer.get(tensor)
    return node is not None and node.op_type == "Reciprocal" and node.input[0] in sigmas


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
