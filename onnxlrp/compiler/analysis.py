"""What the compiler must know about the graph before it emits anything (docs/rules.md).

- Sources: the explained tensors. A float input is its own source; token ids (an integer input that feeds an
  embedding Gather) are explained through the embedding rows they gather.
- Held constants: the 1/sigma of decomposed LayerNorm and RMSNorm chains (a Sqrt of a mean of squares plus
  epsilon), and whatever a rule holds constant (a gate, CP-LRP's attention probabilities, a normalising
  divisor): no relevance flows through them, which makes norms linear and gates constant.
- Live tensors: those that depend on a source without passing a held constant; only they carry relevance.
- The path: the nodes relevance passes through from the explained output down to the sources.
- Kinds and rules: every node on the path whose family has a kind is a Layer of that kind (onnxlrp.composites);
  the composite gives its rule. Weighted layers (conv, dense) are numbered in execution order, the first one
  fed by the primary input first (the "first layer" of the Flat and Box composites).
- Non-linearity blocks: an element-wise x * h(x) (Erf- or tanh-GELU, SiLU, Mish), a Mul whose two operands
  share an element-wise ancestor x, is one non-linearity whose input is x.
- Input normalisation: affine steps with constant operands right at a float graph input are routed (Pass).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto

from ..composites import Composite, Layer
from ..errors import QUANTIZED_ACTIVATION_OPS, UnsupportedModelError, UnsupportedOpError
from ..graph import ForwardGraph
from ..ops.registry import WEIGHTED_KINDS, family_of
from ..rules import Rule

FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)
# element-wise ops of one computed operand (the others, if any, constant)
UNARY_NONLINEAR = ("Erf", "Tanh", "Sigmoid", "Relu", "Gelu", "Exp", "Abs", "Softplus", "Softsign", "Elu", "Selu",
                   "Celu", "LeakyRelu", "HardSigmoid", "HardSwish", "Mish", "Sqrt", "Reciprocal", "Log", "Sin",
                   "Cos", "ThresholdedRelu", "Clip", "PRelu", "Pow")
UNARY_LINEAR = ("Neg", "Identity", "Cast", "Dropout")
BINARY_ELEMENTWISE = ("Add", "Sub", "Mul", "Div")
AFFINE_OPS = ("Add", "Sub", "Mul", "Div")
# an integer input read through these is still the token ids
TOKEN_ROUTING = ("Cast", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze")


@dataclass
class Analysis:
    fwd: ForwardGraph
    sources: dict[str, list[str]]       # explained input -> the tensors whose relevance it gets
    logits: str
    live: set[str] = field(default_factory=set)
    held: set[str] = field(default_factory=set)           # held constant
    sigmas: set[str] = field(default_factory=set)         # normalisers of decomposed norms
    blocks: dict[str, str] = field(default_factory=dict)  # non-linearity block root (node name) -> its input x
    kinds: dict[str, str] = field(default_factory=dict)   # node name -> kind
    refused: dict[str, UnsupportedOpError] = field(default_factory=dict)   # node name -> why it has no rule
    rules: dict[str, Rule] = field(default_factory=dict)  # node name -> its rule
    layers: list[tuple[Layer, Rule]] = field(default_factory=list)
    path: list[onnx.NodeProto] = field(default_factory=list)
    _ancestry: dict[str, set[str]] = field(default_factory=dict)

    # ---- queries the op families' kind functions use ----

    def carries(self, tensor: str) -> bool:
        return bool(tensor) and tensor in self.live

    def computed_from(self, a: str, b: str) -> bool:
        """Is tensor a computed from tensor b?"""
        return a != b and b in self.fwd.ancestors(a)

    def through_nonlinearity(self, tensor: str) -> bool:
        """Did `tensor` go through an element-wise non-linearity since its last layer?"""
        return any(self.fwd.producer[t].op_type in UNARY_NONLINEAR for t in self._ancestry.get(tensor, {tensor})
                   if t in self.fwd.producer)

    def is_normaliser(self, tensor: str) -> bool:
        """sigma or 1 / sigma of a decomposed norm."""
        if tensor in self.sigmas:
            return True
        node = self.fwd.producer.get(tensor)
        return node is not None and node.op_type == "Reciprocal" and node.input[0] in self.sigmas

    def block_input(self, node: onnx.NodeProto) -> str | None:
        """x of a block x * h(x): the latest element-wise ancestor the two operands of a Mul share."""
        if node.op_type != "Mul" or len(node.input) != 2:
            return None
        a, b = (self._ancestry.get(name, {name}) for name in node.input)
        common = a & b
        if not common:
            return None
        order = {o: k for k, n in enumerate(self.fwd.nodes) for o in n.output}
        return max(common, key=lambda t: order.get(t, -1))

    @property
    def all_sources(self) -> list[str]:
        return [t for ts in self.sources.values() for t in ts]


def analyse(fwd: ForwardGraph, sources: dict[str, list[str]], logits: str, composite: Composite) -> Analysis:
    analysis = Analysis(fwd=fwd, sources=sources, logits=logits)
    analysis.sigmas = normalisers(fwd)
    analysis.held = set(analysis.sigmas)
    _trace(analysis)
    _classify(analysis)
    # what the rules hold constant (gates, CP-LRP's probabilities, normalising divisors); the kinds stay those of
    # the whole graph (a gate held constant is still a gate), the path shrinks
    holding = []
    for node in analysis.path:
        family = family_of(node.op_type, node.domain)
        kind = analysis.kinds.get(node.name)
        if family is not None and family.holds is not None and kind is not None:
            held = family.holds(node, analysis, composite.rule_for(_block_layer(node, kind)))
            if held:
                holding.append(node)
                analysis.held |= set(held)
    if holding:
        _trace(analysis)
    _check_reached(analysis)
    _assign_rules(analysis, composite, holding)
    return analysis


def _trace(analysis: Analysis) -> None:
    """Live tensors, element-wise ancestry, blocks and the path, from the sources and the held set."""
    fwd = analysis.fwd
    analysis.live = _live(fwd, analysis.all_sources, analysis.held)
    analysis._ancestry = _elementwise_ancestry(fwd, analysis.live)
    analysis.blocks = {}
    for node in fwd.nodes:
        if node.op_type == "Mul" and len(node.input) == 2 and all(analysis.carries(i) for i in node.input):
            x = analysis.block_input(node)
            if x is not None:
                analysis.blocks[node.name] = x
    analysis.path = _path(analysis)


def _classify(analysis: Analysis) -> None:
    """The kind of every node on the path (a family's kind function may refuse a node: said if it is visited)."""
    analysis.kinds, analysis.refused = {}, {}
    for node in analysis.path:
        family = family_of(node.op_type, node.domain)
        if family is None:
            continue
        try:
            kind = family.kind_of(node, analysis)
        except UnsupportedOpError as exc:
            analysis.refused[node.name] = exc
            continue
        if kind is not None:
            analysis.kinds[node.name] = kind


def inputs_carrying(analysis: Analysis, node: onnx.NodeProto) -> list[str]:
    """The inputs of `node` that relevance flows back into (a block root's: its block input x)."""
    if node.name in analysis.blocks:
        return [analysis.blocks[node.name]]
    return [name for name in node.input if analysis.carries(name)]


def _path(analysis: Analysis) -> list[onnx.NodeProto]:
    """Nodes relevance passes through from the explained output down to the sources, in execution order."""
    carries_relevance = {analysis.logits}
    sources = set(analysis.all_sources)
    path = []
    for node in reversed(analysis.fwd.nodes):
        if not any(o in carries_relevance and o not in sources for o in node.output if o):
            continue
        into = inputs_carrying(analysis, node)
        if into:
            path.append(node)
            carries_relevance.update(into)
    path.reverse()
    return path


def _block_layer(node: onnx.NodeProto, kind: str, at_input: bool = False) -> Layer:
    return Layer(name=node.name, op_type=node.op_type, kind=kind, index=-1, count=0, at_input=at_input)


def _assign_rules(analysis: Analysis, composite: Composite, holding: list[onnx.NodeProto]) -> None:
    """A Layer and a rule for every node of a kind on the path, and for the nodes whose rule holds something
    constant (listed, though nothing flows through them: a CP-LRP Softmax)."""
    fwd = analysis.fwd
    on_path = {node.name for node in analysis.path}
    analysis.kinds = {name: kind for name, kind in analysis.kinds.items()
                      if name in on_path or any(node.name == name for node in holding)}
    weighted = [n for n in analysis.path if analysis.kinds.get(n.name) in WEIGHTED_KINDS]
    primary = next(iter(analysis.sources.values()), [])
    if primary:
        reached = fwd.descendants(primary)
        first = next((n for n in weighted if any(i in reached for i in n.input)), None)
        if first is not None:
            weighted = [first] + [n for n in weighted if n is not first]
    index = {n.name: k for k, n in enumerate(weighted)}
    convs = [n.name for n in weighted if analysis.kinds[n.name] == "conv"]
    at_input = _input_normalisation(analysis)
    layers = []
    for node in fwd.nodes:
        kind = analysis.kinds.get(node.name)
        if kind is None:
            continue
        layers.append(Layer(name=node.name, op_type=node.op_type, kind=kind, index=index.get(node.name, -1),
                            count=len(weighted), conv_index=convs.index(node.name) if node.name in convs else None,
                            at_input=node.name in at_input))
    composite.prepare(layers)
    analysis.layers, analysis.rules = [], {}
    for layer in layers:
        rule = composite.rule_for(layer)
        _check_accepted(layer, rule)
        analysis.layers.append((layer, rule))
        analysis.rules[layer.name] = rule
    for node in analysis.path:   # ops without a kind take a rule only where one is declared
        if node.name not in analysis.rules:
            declared = composite.rule_for_op(node.op_type, node.name)
            if declared is not None:
                analysis.rules[node.name] = declared


def _check_accepted(layer: Layer, rule: Rule) -> None:
    from ..composites import ACCEPTED
    accepted = ACCEPTED.get(layer.kind)
    if accepted is not None and not isinstance(rule, accepted):
        raise UnsupportedModelError(f"node '{layer.name}' ({layer.op_type}) is a '{layer.kind}' block, whose rule is "
                                    f"one of {', '.join('rules.' + a.__name__ + '()' for a in accepted)}; got {rule!r}")


def _input_normalisation(analysis: Analysis) -> set[str]:
    """Affine steps with constant operands between a float graph input and the first layers it feeds
    ((x - mean) / std before the first convolution)."""
    fwd = analysis.fwd
    reached = {name for name in fwd.input_names if name in analysis.live}
    chain = {}
    for node in fwd.nodes:
        if node.op_type not in AFFINE_OPS or len(node.input) != 2:
            continue
        computed = [i for i in node.input if fwd.const(i) is None]
        if len(computed) == 1 and computed[0] in reached and (node.op_type != "Div" or node.input[0] in reached):
            chain[node.output[0]] = node.name
            reached.add(node.output[0])

    def feeds_only_layers(tensor: str) -> bool:
        readers = fwd.consumers.get(tensor, [])
        if not readers or tensor in fwd.output_names:
            return False
        for node in readers:
            family = family_of(node.op_type, node.domain)
            if analysis.kinds.get(node.name) in WEIGHTED_KINDS:
                continue
            if node.output[0] in chain or (family is not None and family.routes):
                if not feeds_only_layers(node.output[0]):
                    return False
                continue
            return False
        return True

    return {name for tensor, name in chain.items() if feeds_only_layers(tensor)}


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


def _live(fwd: ForwardGraph, sources: list[str], held: set[str]) -> set[str]:
    """Tensors computed from the sources that relevance can flow through: float ones, and the integer output
    of a QuantizeLinear (the same values rounded; its DequantizeLinear turns them back, ops/quantized.py). An
    op on integer activations that no span holds writes integers, typed or not (a contrib op's output often
    is not)."""
    live = set(sources)
    for node in fwd.nodes:
        if node.op_type in QUANTIZED_ACTIVATION_OPS:
            continue
        if any(i in live for i in node.input if i):
            live.update(o for o in node.output if o and o not in held and (
                fwd.elem_type(o) in FLOAT_TYPES + (None,) or node.op_type == "QuantizeLinear"))
    return live


def _check_reached(analysis: Analysis) -> None:
    """Relevance that reaches none of the explained inputs would be a heatmap of zeros: say instead which node
    stops it (an op whose output is an integer tensor, such as a quantized layer)."""
    sources = set(analysis.all_sources)
    if analysis.logits in sources or any(i in sources for node in analysis.path for i in node.input):
        return
    fwd = analysis.fwd
    ancestors = fwd.ancestors(analysis.logits) | {analysis.logits}
    for node in fwd.nodes:
        outputs = [o for o in node.output if o in ancestors]
        if outputs and any(analysis.carries(i) for i in node.input) and not any(analysis.carries(o) for o in outputs):
            kind = TensorProto.DataType.Name(fwd.elem_type(outputs[0]) or TensorProto.UNDEFINED).lower()
            kind = "an integer" if kind == "undefined" else f"a {kind}"
            raise UnsupportedOpError(node.op_type, node.name, f"its output '{outputs[0]}' is {kind} tensor computed "
                                     "from the explained input, which relevance cannot flow through")


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


# ---- the explained inputs ----

def explained_sources(fwd: ForwardGraph, inputs) -> dict[str, list[str]]:
    """Explained input -> its source tensors: a float input itself; token ids the outputs of the Gathers that
    read embedding rows with them. `inputs`: a name or a list of names explained first, the default ones after
    them (the token inputs of a language model, else the float inputs), then the past keys and values of a
    decoding cache (their relevance is reported per cached position; an empty past has none)."""
    if isinstance(inputs, str):
        inputs = [inputs]
    names = list(inputs or [])
    names += [name for name in _default_inputs(fwd) if name not in names]
    names += [name for name in cache_axes(fwd) if name not in names]
    sources = {}
    for name in names:
        if name not in fwd.input_names:
            raise UnsupportedModelError(f"the model has no input '{name}'; its inputs are {fwd.input_names}")
        if fwd.elem_type(name) in FLOAT_TYPES:
            sources[name] = [name]
            continue
        gathers = _embedding_gathers(fwd, name)
        if not gathers:
            raise UnsupportedModelError(f"the integer input '{name}' reads no embedding table (a Gather of constant "
                                        "rows); only float inputs and token ids can be explained")
        sources[name] = gathers
    if not sources:
        raise UnsupportedModelError(f"the model has no input to explain (float values or token ids); its inputs are "
                                    f"{fwd.input_names}")
    return sources


def _embedding_gathers(fwd: ForwardGraph, name: str) -> list[str]:
    """Rows of a constant embedding table read with the ids in `name` (a 4-/8-bit table: onnxruntime's
    GatherBlockQuantized, whose output is the dequantized rows)."""
    return [node.output[0] for node in fwd.nodes if _is_embedding(node)
            and _reads(fwd, node.input[1], name) and fwd.const(node.input[0]) is not None]


def _is_embedding(node) -> bool:
    return ((node.op_type == "Gather" and node.domain in ("", "ai.onnx") and len(node.input) == 2)
            or (node.op_type == "GatherBlockQuantized" and node.domain == "com.microsoft"))


def _reads(fwd: ForwardGraph, tensor: str, name: str) -> bool:
    """Is `tensor` the input `name`, or a Cast or reshaping of it?"""
    while tensor != name:
        node = fwd.producer.get(tensor)
        if node is None or node.op_type not in TOKEN_ROUTING:
            return False
        tensor = node.input[0]
    return True


def _default_inputs(fwd: ForwardGraph) -> list[str]:
    tokens = [n for n in fwd.input_names if fwd.elem_type(n) not in FLOAT_TYPES and _embedding_gathers(fwd, n)]
    if tokens:
        return tokens
    return [n for n in fwd.input_names if fwd.elem_type(n) in FLOAT_TYPES and not _is_cache(fwd, n)]


def _is_cache(fwd: ForwardGraph, name: str) -> bool:
    return name in cache_axes(fwd)


def cache_axes(fwd: ForwardGraph) -> dict[str, int]:
    """Past keys and values of a decoding cache -> their position axis: float inputs concatenated with a
    computed tensor (the new keys or values) along that axis, and otherwise read only for their shape (the
    position offset)."""
    found = {}
    for name in fwd.input_names:
        if fwd.elem_type(name) not in FLOAT_TYPES:
            continue
        readers = fwd.consumers.get(name, [])
        joins = [node for node in readers if node.op_type == "Concat"
                 and any(i != name and fwd.const(i) is None for i in node.input)]
        if joins and all(node in joins or node.op_type == "Shape" for node in readers):
            rank = len(fwd.shape(name) or ()) or 4
            found[name] = int(next(a.i for a in joins[0].attribute if a.name == "axis")) % rank
    return found
