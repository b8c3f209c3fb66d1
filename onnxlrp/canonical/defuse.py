"""De-fuse onnxruntime's com.microsoft transformer ops into standard ops, so that their insides get the
same rules as any exporter's graph (`onnxruntime.transformers.optimizer.optimize_model` emits them).

Each fused op becomes the chain it stands for: LayerNorm variants a LayerNormalization (opset >= 17) or
the decomposed chain whose sigma patterns.normalisers holds constant; GELU variants their Erf / tanh /
sigmoid chains (non-linearity blocks); Attention and MultiHeadAttention the MatMul / Softmax / MatMul
they compute, with their masks as additive constants. Any other com.microsoft op is refused later with
the usual one-line error."""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CONTRIB = "com.microsoft"


class _Emitter:
    """Builds the replacement nodes of one fused node, with names under its own."""

    def __init__(self, node: onnx.NodeProto, opset: int, initializers: list):
        self.node, self.opset, self.initializers = node, opset, initializers
        self.nodes: list[onnx.NodeProto] = []
        self.k = 0

    def name(self, hint: str) -> str:
        self.k += 1
        return f"{self.node.name or self.node.op_type}/defused/{self.k}_{hint}"

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        out = output or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs))
        return out

    def const(self, value, dtype=np.float32) -> str:
        name = self.name("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def reduce_mean(self, x: str, axes: list[int]) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.const(axes, np.int64)], keepdims=1)
        return self.op("ReduceMean", [x], axes=axes, keepdims=1)

    def layer_norm(self, x: str, scale: str, bias: str | None, epsilon: float, axis: int, output: str,
                   simplified: bool = False) -> None:
        if not simplified and self.opset >= 17:
            inputs = [x, scale] + ([bias] if bias else [])
            self.op("LayerNormalization", inputs, output, axis=axis, epsilon=epsilon)
            return
        axes = [axis] if axis == -1 else list(range(axis, axis + 1))
        centred = x if simplified else self.op("Sub", [x, self.reduce_mean(x, axes)])
        variance = self.reduce_mean(self.op("Pow", [centred, self.const(2.0)]), axes)
        sigma = self.op("Sqrt", [self.op("Add", [variance, self.const(epsilon)])])
        scaled = self.op("Mul", [self.op("Div", [centred, sigma]), scale], None if bias else output)
        if bias:
            self.op("Add", [scaled, bias], output)

    def erf_gelu(self, x: str, output: str) -> None:
        erf = self.op("Erf", [self.op("Div", [x, self.const(math.sqrt(2.0))])])
        half = self.op("Mul", [x, self.const(0.5)])
        self.op("Mul", [half, self.op("Add", [erf, self.const(1.0)])], output)

    def tanh_gelu(self, x: str, output: str) -> None:
        cube = self.op("Mul", [self.op("Pow", [x, self.const(3.0)]), self.const(0.044715)])
        inner = self.op("Mul", [self.op("Add", [x, cube]), self.const(math.sqrt(2.0 / math.pi))])
        half = self.op("Mul", [x, self.const(0.5)])
        self.op("Mul", [half, self.op("Add", [self.op("Tanh", [inner]), self.const(1.0)])], output)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _inputs(node: onnx.NodeProto, n: int) -> list[str | None]:
    return [node.input[i] if i < len(node.input) and node.input[i] else None for i in range(n)]


def _out(node: onnx.NodeProto, j: int) -> str | None:
    return node.output[j] if j < len(node.output) and node.output[j] else None


def _skip_layer_norm(e: _Emitter, node, simplified: bool) -> None:
    attrs = _attrs(node)
    if simplified:
        x, skip, gamma, bias = _inputs(node, 4)
        beta = None
    else:
        x, skip, gamma, beta, bias = _inputs(node, 5)
    total = e.op("Add", [x, skip], None if bias else _out(node, 3))
    if bias:
        total = e.op("Add", [total, bias], _out(node, 3))
    e.layer_norm(total, gamma, beta, float(attrs.get("epsilon", 1e-12)), -1, node.output[0], simplified)


def _simplified_layer_norm(e: _Emitter, node) -> None:
    attrs = _attrs(node)
    x, scale = _inputs(node, 2)
    e.layer_norm(x, scale, None, float(attrs.get("epsilon", 1e-5)), int(attrs.get("axis", -1)), node.output[0],
                 simplified=True)


def _layer_norm(e: _Emitter, node) -> None:
    attrs = _attrs(node)
    x, scale, bias = _inputs(node, 3)
    e.layer_norm(x, scale, bias, float(attrs.get("epsilon", 1e-5)), int(attrs.get("axis", -1)), node.output[0])


def _gelu(e: _Emitter, node, tanh: bool) -> None:
    x, bias = _inputs(node, 2)
    if bias:
        x = e.op("Add", [x, bias])
    (e.tanh_gelu if tanh else e.erf_gelu)(x, node.output[0])


def _quick_gelu(e: _Emitter, node) -> None:
    alpha = float(_attrs(node).get("alpha", 1.702))
    x = node.input[0]
    e.op("Mul", [x, e.op("Sigmoid", [e.op("Mul", [x, e.const(alpha)])])], node.output[0])


def _swap_last(e: _Emitter, x: str, rank: int) -> str:
    return e.op("Transpose", [x], perm=list(range(rank - 2)) + [rank - 1, rank - 2])


def _fused_matmul(e: _Emitter, node, ranks: dict) -> None:
    attrs = _attrs(node)
    if attrs.get("transBatchA", 0) or attrs.get("transBatchB", 0):
        raise _refuse(node, "FusedMatMul with transBatchA/transBatchB")
    a, b = _inputs(node, 2)
    if attrs.get("transA", 0):
        a = _swap_last(e, a, ranks.get(a, 2))
    if attrs.get("transB", 0):
        b = _swap_last(e, b, ranks.get(b, 2))
    alpha = float(attrs.get("alpha", 1.0))
    product = e.op("MatMul", [a, b], None if alpha != 1.0 else node.output[0])
    if alpha != 1.0:
        e.op("Mul", [product, e.const(alpha)], node.output[0])


def _heads(e: _Emitter, x: str, heads: int) -> str:
    """[B, S, H*d] -> [B, H, S, d]"""
    split = e.op("Reshape", [x, e.const([0, 0, heads, -1], np.int64)])
    return e.op("Transpose", [split], perm=[0, 2, 1, 3])


def _attend(e: _Emitter, q: str, k: str, v: str, heads: int, scale: str, additive: list[str], output: str) -> None:
    """softmax(Q K^T * scale + masks) V per head, heads merged back; scale a tensor name."""
    qh, kh, vh = _heads(e, q, heads), _heads(e, k, heads), _heads(e, v, heads)
    scores = e.op("MatMul", [qh, e.op("Transpose", [kh], perm=[0, 1, 3, 2])])
    scores = e.op("Mul", [scores, scale])
    for mask in additive:
        scores = e.op("Add", [scores, mask])
    probs = e.op("Softmax", [scores], axis=-1)
    context = e.op("Transpose", [e.op("MatMul", [probs, vh])], perm=[0, 2, 1, 3])
    e.op("Reshape", [context, e.const([0, 0, -1], np.int64)], output)


def _key_mask(e: _Emitter, mask: str, mask_rank: int, keys_like: str, filter_value: float) -> str:
    """An additive [B, 1, 1, L] mask from a raw [B, L] mask (0 = masked) or a [B] count of valid keys."""
    if mask_rank == 1:
        length = e.op("Shape", [keys_like], start=1, end=2)
        zero = e.op("Constant", [], value=helper.make_tensor("value", TensorProto.INT64, [], [0]))
        one = e.op("Constant", [], value=helper.make_tensor("value", TensorProto.INT64, [], [1]))
        positions = e.op("Range", [zero, e.op("Squeeze", [length]), one])
        valid = e.op("Less", [e.op("Unsqueeze", [positions, e.const([0], np.int64)]),
                              e.op("Unsqueeze", [e.op("Cast", [mask], to=TensorProto.INT64), e.const([1], np.int64)])])
    elif mask_rank == 2:
        valid = e.op("Cast", [mask], to=TensorProto.BOOL)
    else:
        raise ValueError(mask_rank)
    additive = e.op("Where", [valid, e.const(0.0), e.const(filter_value)])
    return e.op("Unsqueeze", [additive, e.const([1, 2], np.int64)])


def _causal_mask(e: _Emitter, like: str, filter_value: float) -> str:
    length = e.op("Shape", [like], start=1, end=2)
    ones = e.op("ConstantOfShape", [e.op("Concat", [length, length], axis=0)],
                value=helper.make_tensor("value", TensorProto.FLOAT, [1], [1.0]))
    lower = e.op("Trilu", [ones], upper=0)
    return e.op("Where", [e.op("Cast", [lower], to=TensorProto.BOOL), e.const(0.0), e.const(filter_value)])


def _attention(e: _Emitter, node, ranks: dict, consts: dict) -> None:
    attrs = _attrs(node)
    x, weights, bias, mask, past, attention_bias = _inputs(node, 6)
    if past or attrs.get("past_present_share_buffer", 0) or any(node.output[1:]):
        raise _refuse(node, "Attention with past key/values (a decoding cache)")
    heads = int(attrs["num_heads"])
    dims = consts.get(weights)
    if dims is None:
        raise _refuse(node, "Attention with computed weights")
    sizes = list(attrs.get("qkv_hidden_sizes", [dims[1] // 3] * 3))
    filter_value = float(attrs.get("mask_filter_value", -10000.0))
    qkv = e.op("MatMul", [x, weights])
    if bias:
        qkv = e.op("Add", [qkv, bias])
    q, k, v = e.name("q"), e.name("k"), e.name("v")
    e.nodes.append(helper.make_node("Split", [qkv, e.const(sizes, np.int64)], [q, k, v], axis=-1,
                                    name=e.name("Split")))
    additive = []
    if mask:
        if ranks.get(mask) not in (1, 2):
            raise _refuse(node, f"Attention with a mask_index of rank {ranks.get(mask)} (only [batch] lengths and "
                          "[batch, seq] masks are de-fused)")
        additive.append(_key_mask(e, mask, ranks[mask], x, filter_value))
    if attrs.get("unidirectional", 0):
        additive.append(_causal_mask(e, x, filter_value))
    if attention_bias:
        additive.append(attention_bias)
    scale = attrs.get("scale") or 1.0 / math.sqrt(sizes[0] // heads)
    _attend(e, q, k, v, heads, e.const(scale), additive, node.output[0])


def _multi_head_attention(e: _Emitter, node, ranks: dict) -> None:
    attrs = _attrs(node)
    query, key, value, bias, key_padding_mask, attention_bias = _inputs(node, 6)
    if any(_inputs(node, 8)[6:]) or any(node.output[1:]) or ranks.get(query) != 3 or ranks.get(key) != 3:
        raise _refuse(node, "MultiHeadAttention with packed inputs or a decoding cache (only separate [batch, seq, "
                      "hidden] query, key and value are de-fused)")
    heads = int(attrs["num_heads"])
    filter_value = float(attrs.get("mask_filter_value", -10000.0))
    if bias:
        parts = [e.name("bias_q"), e.name("bias_k"), e.name("bias_v")]
        e.nodes.append(helper.make_node("Split", [bias], parts, axis=0, num_outputs=3, name=e.name("Split"))
                       if e.opset >= 18 else helper.make_node("Split", [bias], parts, axis=0, name=e.name("Split")))
        query, key, value = (e.op("Add", [t, b]) for t, b in zip((query, key, value), parts))
    additive = []
    if key_padding_mask:
        additive.append(_key_mask(e, key_padding_mask, ranks.get(key_padding_mask, 2), key, filter_value))
    if attrs.get("unidirectional", 0):
        additive.append(_causal_mask(e, query, filter_value))
    if attention_bias:
        additive.append(attention_bias)
    if attrs.get("scale"):
        scale = e.const(attrs["scale"])
    else:   # 1 / sqrt(head size), the head size read from the query's shape
        hidden = e.op("Cast", [e.op("Shape", [query], start=2, end=3)], to=TensorProto.FLOAT)
        scale = e.op("Div", [e.const([1.0]), e.op("Sqrt", [e.op("Div", [hidden, e.const([float(heads)])])])])
    _attend(e, query, key, value, heads, scale, additive, node.output[0])


def _embed_layer_norm(e: _Emitter, node) -> None:
    attrs = _attrs(node)
    ids, segments, word, position, segment, gamma, beta, mask, position_ids = _inputs(node, 9)
    total = e.op("Gather", [word, ids])
    if position_ids is None:
        length = e.op("Shape", [ids], start=1, end=2)
        zero = e.op("Constant", [], value=helper.make_tensor("value", TensorProto.INT64, [], [0]))
        one = e.op("Constant", [], value=helper.make_tensor("value", TensorProto.INT64, [], [1]))
        position_ids = e.op("Unsqueeze", [e.op("Range", [zero, e.op("Squeeze", [length]), one]),
                                          e.const([0], np.int64)])
    total = e.op("Add", [total, e.op("Gather", [position, position_ids])])
    if segments and segment:
        total = e.op("Add", [total, e.op("Gather", [segment, segments])])
    if _out(node, 2):
        total = e.op("Identity", [total], _out(node, 2))
    e.layer_norm(total, gamma, beta, float(attrs.get("epsilon", 1e-12)), -1, node.output[0])
    if _out(node, 1):
        if mask:
            counted = e.op("ReduceSum", [e.op("Cast", [mask], to=TensorProto.INT64), e.const([1], np.int64)],
                           keepdims=0)
        else:
            counted = e.op("Squeeze", [e.op("Shape", [ids], start=1, end=2)])
            counted = e.op("Expand", [counted, e.op("Shape", [ids], start=0, end=1)])
        e.op("Cast", [counted], _out(node, 1), to=TensorProto.INT32)


def _refuse(node, what: str):
    from ..errors import UnsupportedModelError
    return UnsupportedModelError(f"op {node.op_type} (node '{node.name or '?'}'): {what} cannot be de-fused into "
                                 "standard ops; explain the model as exported, before onnxruntime's transformer "
                                 "optimizer")


# op type -> what it becomes: each takes (emitter, node, ranks, constants)
DEFUSERS = {
    "SkipLayerNormalization": lambda e, n, ranks, consts: _skip_layer_norm(e, n, simplified=False),
    "SkipSimplifiedLayerNormalization": lambda e, n, ranks, consts: _skip_layer_norm(e, n, simplified=True),
    "SimplifiedLayerNormalization": lambda e, n, ranks, consts: _simplified_layer_norm(e, n),
    "LayerNormalization": lambda e, n, ranks, consts: _layer_norm(e, n),
    "BiasGelu": lambda e, n, ranks, consts: _gelu(e, n, tanh=False),
    "Gelu": lambda e, n, ranks, consts: _gelu(e, n, tanh=False),
    "FastGelu": lambda e, n, ranks, consts: _gelu(e, n, tanh=True),
    "QuickGelu": lambda e, n, ranks, consts: _quick_gelu(e, n),
    "FusedMatMul": lambda e, n, ranks, consts: _fused_matmul(e, n, ranks),
    "Attention": lambda e, n, ranks, consts: _attention(e, n, ranks, consts),
    "MultiHeadAttention": lambda e, n, ranks, consts: _multi_head_attention(e, n, ranks),
    "EmbedLayerNormalization": lambda e, n, ranks, consts: _embed_layer_norm(e, n),
}


def _fused(node: onnx.NodeProto) -> bool:
    """A com.microsoft op, or SimplifiedLayerNormalization, which onnxruntime defines in the onnx domain."""
    return node.domain == CONTRIB or (node.op_type == "SimplifiedLayerNormalization"
                                      and node.domain in ("", "ai.onnx"))


def defuse_contrib_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    if not any(_fused(n) for n in graph.node):
        return model
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    consts = {t.name: list(t.dims) for t in graph.initializer}   # the constants' dims (no weight copied)
    ranks = _ranks(model)
    nodes, initializers = [], []
    for node in graph.node:
        if not _fused(node):
            nodes.append(node)
            continue
        e = _Emitter(node, opset, initializers)
        defuse = DEFUSERS.get(node.op_type)
        if defuse is None:
            nodes.append(node)    # refused later, named, with the usual remedy
            continue
        defuse(e, node, ranks, consts)
        nodes.extend(e.nodes)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    if not any(n.domain == CONTRIB for n in graph.node):
        kept = [o for o in model.opset_import if o.domain != CONTRIB]
        del model.opset_import[:]
        model.opset_import.extend(kept)
    return model


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Ranks of the tensors the de-fusing needs, from onnxruntime-aware shape inference where it can."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - contrib ops may stop onnx's inference; ranks are a best effort
        inferred = model
    ranks = {}
    for value in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        if value.type.tensor_type.HasField("shape"):
            ranks[value.name] = len(value.type.tensor_type.shape.dim)
    for tensor in inferred.graph.initializer:
        ranks[tensor.name] = len(tensor.dims)
    for node in model.graph.node:   # what onnx cannot infer for contrib ops
        if node.op_type == "EmbedLayerNormalization" and len(node.output) > 1 and node.output[1]:
            ranks[node.output[1]] = 1   # mask_index: the count of valid tokens per sample
    return ranks
