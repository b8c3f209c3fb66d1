"""Concept-conditional relevance (CRP, docs/rules.md): relevance masked to chosen channels of a layer on its way
down, and the concept relevance of every channel of a layer.

A condition names a layer (an ONNX node name or tensor name of the canonical graph) and channels: axis 1
of NCHW-like tensors, the last axis of [batch, seq, hidden] ones. The explainer model takes one 0/1
mask per sample and conditioned layer (input `condition/<tensor>`, [batch, channels]), so several
concepts of one input run as one batch. Where relevance reaches a conditioned tensor it is multiplied by
the mask, and all relevance still on its way down by other paths is dropped: relevance cannot bypass a
mask through a skip connection (zennit-crp's exclude_parallel=True); several conditioned layers apply in
order from the top. Concept relevance at a layer: per channel, the sum over positions of R there, with
the sum of those sums' absolute values beside it, zennit-crp's abs_norm denominator (outputs
`lrp_concept/<tensor>` and `lrp_concept_abs/<tensor>`).
"""
from __future__ import annotations

from onnx import TensorProto, helper

from .compiler.signals import RELEVANCE, Signal, convert
from .errors import UnsupportedModelError
from .graph import ForwardGraph

CONDITION_PREFIX = "condition/"
CONCEPT_PREFIX = "lrp_concept/"
CONCEPT_ABS_PREFIX = "lrp_concept_abs/"


def resolve_layer(fwd: ForwardGraph, name: str) -> str:
    """The tensor a layer name stands for: a tensor of the graph, or the first output of a node."""
    if name in fwd.producer:
        return name
    node = fwd.node_named.get(name)
    if node is not None:
        return node.output[0]
    layers = [n.name for n in fwd.nodes if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul", "Relu")][:12]
    raise UnsupportedModelError(f"the model has no layer or tensor '{name}' (after canonicalisation: BatchNorms "
                                f"are folded into their convolutions); layers include {layers}; `onnxlrp inspect` "
                                "lists them all")


# layers whose outputs have their channels on axis 1 (NCL, NCHW, ...), and ops that keep the layout
CHANNELS_FIRST = ("Conv", "ConvTranspose", "BatchNormalization", "MaxPool", "AveragePool", "LpPool", "Resize")
ELEMENT_WISE = ("Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Clip", "Elu", "Selu", "HardSwish", "Gelu", "Mish",
                "Add", "Sub", "Mul", "Div", "Identity", "Dropout", "Cast")


def _channels_first(fwd: ForwardGraph, tensor: str) -> bool:
    """Does this rank-3 tensor come from a 1-D convolution ([batch, channels, length]) rather than a transformer
    layer ([batch, seq, hidden])?"""
    node = fwd.producer.get(tensor)
    while node is not None and node.op_type in ELEMENT_WISE:
        node = fwd.producer.get(node.input[0])
    return node is not None and node.op_type in CHANNELS_FIRST


def channel_axis(fwd: ForwardGraph, tensor: str) -> tuple[int, int]:
    """(rank, channel axis) of a conditioned tensor: axis 1, except the last axis of a transformer's
    [batch, seq, hidden]."""
    shape = fwd.shape(tensor)
    if shape is None or len(shape) < 2:
        raise UnsupportedModelError(f"the layer tensor '{tensor}' has no channel axis (shape {shape})")
    axis = len(shape) - 1 if (len(shape) == 3 and not _channels_first(fwd, tensor)) else 1
    if shape[axis] is None:
        raise UnsupportedModelError(f"the layer tensor '{tensor}' has a dynamic channel count")
    return len(shape), axis


def condition_input(tensor: str, channels: int):
    return helper.make_tensor_value_info(CONDITION_PREFIX + tensor, TensorProto.FLOAT, ["batch", channels])


def concept_outputs(tensor: str, channels: int):
    return [helper.make_tensor_value_info(CONCEPT_PREFIX + tensor, TensorProto.FLOAT, ["batch", channels]),
            helper.make_tensor_value_info(CONCEPT_ABS_PREFIX + tensor, TensorProto.FLOAT, ["batch"])]


def _broadcastable(b, per_channel: str, rank: int, axis: int) -> str:
    """[batch, C] -> a shape that broadcasts along the tensor's other axes."""
    others = [a for a in range(1, rank) if a != axis]
    return b.op("Unsqueeze", [per_channel, b.ints(others)]) if others else per_channel


def masked(b, relevance: str, tensor: str, rank: int, axis: int) -> str:
    return b.op("Mul", [relevance, _broadcastable(b, CONDITION_PREFIX + tensor, rank, axis)], hint="condition")


def emit_concepts(b, relevance: str, tensor: str, rank: int, axis: int) -> None:
    """Per-channel sums of R at the tensor, and the sum of their absolute values."""
    others = [a for a in range(1, rank) if a != axis]
    per_channel = b.op("ReduceSum", [relevance, b.ints(others)], keepdims=0) if others else relevance
    b.nodes.append(helper.make_node("Identity", [per_channel], [CONCEPT_PREFIX + tensor], name=b.fresh("concepts")))
    b.nodes.append(helper.make_node("ReduceSum", [b.op("Abs", [per_channel]), b.ints([1])],
                                    [CONCEPT_ABS_PREFIX + tensor], keepdims=0, name=b.fresh("concepts_abs")))


class ConceptLayers:
    """The conditioned and concept layers of one compile, and what the compiler's walk does at them."""

    def __init__(self, fwd: ForwardGraph, path, conditions, concepts):
        produced = {o for node in path for o in node.output}
        self.conditioned, self.concepts = {}, {}
        self.inputs, self.outputs = [], []
        self.condition_inputs, self.concept_outputs = {}, {}
        for names, into in ((conditions or [], self.conditioned), (concepts or [], self.concepts)):
            for name in names:
                tensor = resolve_layer(fwd, name)
                if tensor not in produced:
                    raise UnsupportedModelError(f"layer '{name}' (tensor '{tensor}') is not on the way from the "
                                                "explained output to the input: no relevance reaches it")
                rank, axis = channel_axis(fwd, tensor)
                into[tensor] = (rank, axis, int(fwd.shape(tensor)[axis]), name)
        for tensor, (_, _, channels, name) in self.conditioned.items():
            self.inputs.append(condition_input(tensor, channels))
            self.condition_inputs[name] = CONDITION_PREFIX + tensor
        for tensor, (_, _, channels, name) in self.concepts.items():
            self.outputs += concept_outputs(tensor, channels)
            self.concept_outputs[name] = (CONCEPT_PREFIX + tensor, CONCEPT_ABS_PREFIX + tensor)

    def apply(self, b, node, signals: list, received: dict) -> list:
        """At the node producing a concept or conditioned tensor: emit its concept sums, mask what arrives there
        and drop what is still on its way down by other paths."""
        for j, out in enumerate(node.output):
            signal = signals[j]
            if signal is None or (out not in self.concepts and out not in self.conditioned):
                continue
            if out in self.concepts:
                rank, axis, _, _ = self.concepts[out]
                emit_concepts(b, convert(b, signal, out, RELEVANCE), out, rank, axis)
            if out in self.conditioned:
                rank, axis, _, _ = self.conditioned[out]
                received.clear()   # relevance cannot bypass the mask
                signals = [Signal(masked(b, signal.name, out, rank, axis), signal.form) if k == j else None
                           for k in range(len(signals))]
        return signals
