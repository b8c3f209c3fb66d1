"""A dense layer that writes a graph output, computed as one MatMul again.

The canonical form computes a dense layer on [..., K] inputs as Reshape -> Gemm -> Reshape (canonical/dense.py).
Where that last Reshape writes a graph output (a language model's logits), onnxruntime cannot let the output
share the Gemm's buffer and copies it: the [batch, seq, vocab] logits twice at the end of the forward (2.4 GB at
2048 tokens with Qwen2.5's 151936 words), which plain inference of the model does not hold. This pass writes such
a layer (without a bias) as MatMul(x, W^T), the form the exporters wrote, whose output is the graph output itself.
The weight is then stored once, as [K, N]: the relevance nodes that multiply by it as [N, K] (A @ W, the layer's
transpose) read it as Gemm(A, W^T, transB=1), the same products. The flattened input stays where relevance
nodes read it (a Reshape: no copy); where one reads the Gemm's flat output, the layer is left as it is.
"""
from __future__ import annotations

import numpy as np
from onnx import NodeProto, helper, numpy_helper


def output_layers_as_matmul(nodes: list[NodeProto], outputs: set[str], initializers) -> list[NodeProto]:
    """`nodes` (forward and relevance) with each such layer rewritten; `initializers` (the graph's, a protobuf
    list) get the weight transposed in place of the Gemm's."""
    producer = {out: node for node in nodes for out in node.output}
    readers: dict[str, list[NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    weights = {tensor.name: k for k, tensor in enumerate(initializers)}
    replaced: dict[int, list[NodeProto]] = {}
    for unflatten in nodes:
        if unflatten.op_type != "Reshape" or unflatten.output[0] not in outputs:
            continue
        layer = _layer_under(unflatten, producer, readers, weights, initializers)
        if layer is None:
            continue
        gemm, x, weight = layer
        transposed = numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(initializers[weights[weight]]).T),
                                             f"{weight}_T")
        initializers[weights[weight]].CopyFrom(transposed)
        replaced[id(gemm)] = []
        replaced[id(unflatten)] = [helper.make_node("MatMul", [x, transposed.name], list(unflatten.output),
                                                    name=gemm.name)]
        for reader in readers[weight]:
            if reader is not gemm:   # A @ W = Gemm(A, W^T, transB=1)
                replaced[id(reader)] = [helper.make_node("Gemm", [reader.input[0], transposed.name],
                                                         list(reader.output), name=reader.name, transB=1)]
    return [new for node in nodes for new in replaced.get(id(node), [node])]


def _layer_under(unflatten: NodeProto, producer: dict, readers: dict, weights: dict, initializers):
    """(the Gemm, its unflattened input x, its weight) where `unflatten` is canonical/dense.py's Reshape back to
    x's leading dims of a Gemm without bias that nothing else reads, over a Reshape of x to [-1, K]; else None."""
    gemm = producer.get(unflatten.input[0])
    if gemm is None or gemm.op_type != "Gemm" or len([i for i in gemm.input if i]) != 2:
        return None
    if {(a.name, a.i) for a in gemm.attribute} != {("transB", 1)} or len(readers[gemm.output[0]]) != 1:
        return None
    flatten, weight = producer.get(gemm.input[0]), gemm.input[1]
    if flatten is None or flatten.op_type != "Reshape" or weight not in weights:
        return None
    n, k = initializers[weights[weight]].dims

    def holds(name: str, values: list) -> bool:
        return name in weights and numpy_helper.to_array(initializers[weights[name]]).tolist() == values
    x = flatten.input[0]
    concat = producer.get(unflatten.input[1])
    if not holds(flatten.input[1], [-1, k]) or concat is None or concat.op_type != "Concat" or not holds(
            concat.input[1], [n]):
        return None
    lead = producer.get(concat.input[0])
    if (lead is None or lead.op_type != "Shape" or lead.input[0] != x
            or {(a.name, a.i) for a in lead.attribute} != {("end", -1)}):
        return None
    if any(r.op_type != "MatMul" or list(r.input) != [r.input[0], weight] for r in readers[weight] if r is not gemm):
        return None
    return gemm, x, weight
