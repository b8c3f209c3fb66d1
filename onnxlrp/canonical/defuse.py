"""De-fuse onnxruntime's fused transformer ops (com.microsoft) and the ONNX opset-23 ones into standard ops, so
that their insides get the same rules as any exporter's graph (`onnxruntime.transformers.optimizer.optimize_model`,
onnxruntime-genai's model builder and torch.onnx at opset 23 emit them).

Each fused op becomes the chain it stands for: LayerNorm variants a LayerNormalization (opset >= 17) or
the decomposed chain whose sigma analysis.normalisers holds constant (RMSNormalization and the simplified
norms too); GELU variants their Erf / tanh / sigmoid chains (non-linearity blocks); the attention ops
(Attention, MultiHeadAttention, GroupQueryAttention, ONNX Attention) the MatMul / Softmax / MatMul they
compute, with rotary embeddings as products by the cos / sin rows gathered at run-time positions (constants
for relevance), key/value heads repeated by Expand, their masks as one additive tensor computed from the
positions, and a decoding cache as Concat(past, new) along the sequence axis. What a fused op computes is
stated in tools/llm_graphs.md (section 4) and checked against onnxruntime in tests/canonical/test_defuse_llm.py
and tests/transformers/test_defuse.py. Any other com.microsoft op is refused later with a one-line error.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CONTRIB = "com.microsoft"
LOWEST = float(np.finfo(np.float32).min)   # a masked attention score (what torch.onnx's masks hold)


class _Known:
    """Types and shapes of the graph's tensors, from onnx's shape inference on the graph as de-fused so far
    (re-run when a de-fuser asks about a tensor it has not seen: the outputs of fused ops are unknown to onnx
    until they are de-fused)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.types: dict[str, tuple[int, list | None]] = {}
        self.current: list[onnx.NodeProto] | None = None   # the graph's nodes now, when they changed
        self.added: list[onnx.TensorProto] = []             # and the constants the de-fusing added
        self.constants = {t.name for t in model.graph.initializer}
        self._infer()

    def changed(self, nodes: list[onnx.NodeProto], added: list[onnx.TensorProto]) -> None:
        self.current, self.added = nodes, added

    def _infer(self) -> None:
        from .shapes import without_weights
        skeleton = without_weights(self.model)
        if self.current is not None:
            del skeleton.graph.node[:]
            skeleton.graph.node.extend(self.current)
            skeleton.graph.initializer.extend(self.added)
            self.current = None
        try:
            inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
        except Exception:  # noqa: BLE001 - fused ops may stop onnx's inference; what is known is a best effort
            inferred = skeleton
        for value in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim] \
                if tensor.HasField("shape") else None
            if value.name not in self.types or dims is not None:
                self.types[value.name] = (tensor.elem_type, dims)
        for tensor in self.model.graph.initializer:
            self.types[tensor.name] = (tensor.data_type, list(tensor.dims))

    def _lookup(self, name: str):
        if (name not in self.types or self.types[name][1] is None) and self.current is not None:
            self._infer()
        return self.types.get(name, (0, None))

    def shape(self, name: str) -> list | None:
        """Dims (None where not static), or None where even the rank is unknown."""
        return self._lookup(name)[1]

    def rank(self, name: str) -> int | None:
        shape = self.shape(name)
        return None if shape is None else len(shape)

    def dim(self, name: str, axis: int) -> int | None:
        shape = self.shape(name)
        return None if shape is None or not -len(shape) <= axis < len(shape) else shape[axis]

    def elem_type(self, name: str) -> int:
        return self._lookup(name)[0]

    def is_constant(self, name: str) -> bool:
        return name in self.constants


class _Emitter:
    """Builds the replacement nodes of one fused node, with names under its own."""

    def __init__(self, node: onnx.NodeProto, opset: int, initializers: list, known: _Known | None = None):
        self.node, self.opset, self.initializers, self.known = node, opset, initializers, known
        self.nodes: list[onnx.NodeProto] = []
        self.k = 0

    def name(self, hint: str) -> str:
        self.k += 1
        return f"{self.node.name or self.node.op_type}/defused/{self.k}_{hint}"

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        out = output or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs))
        return out

    def ops(self, op_type: str, inputs: list[str], n: int, **attrs) -> list[str]:
        """A node with n outputs."""
        outs = [self.name(f"{op_type.lower()}{i}") for i in range(n)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name(op_type), **attrs))
        return outs

    def const(self, value, dtype=np.float32) -> str:
        name = self.name("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, values) -> str:
        return self.const(values, np.int64)

    def dim(self, x: str, axis: int) -> str:
        """The size of x along `axis` (>= 0) at run time, a 1-element int64 tensor."""
        return self.op("Shape", [x], start=axis, end=axis + 1)

    def scalar(self, x: str) -> str:
        return self.op("Squeeze", [x, self.ints([0])])

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
        axes = self.norm_axes(x, axis)
        centred = x if simplified else self.op("Sub", [x, self.reduce_mean(x, axes)])
        variance = self.reduce_mean(self.op("Pow", [centred, self.const(2.0)]), axes)
        sigma = self.op("Sqrt", [self.op("Add", [variance, self.const(epsilon)])])
        scaled = self.op("Mul", [self.op("Div", [centred, sigma]), scale], None if bias else output)
        if bias:
            self.op("Add", [scaled, bias], output)

    def norm_axes(self, x: str, axis: int) -> list[int]:
        """The axes a norm over `axis` and the axes after it reduces: negative ones need no rank."""
        if axis < 0:
            return list(range(axis, 0))
        rank = self.known.rank(x) if self.known else None
        if rank is None:
            raise _refuse(self.node, f"a norm over axis {axis} of an input of unknown rank")
        return list(range(axis, rank))

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


def _fused_matmul(e: _Emitter, node) -> None:
    attrs = _attrs(node)
    if attrs.get("transBatchA", 0) or attrs.get("transBatchB", 0):
        raise _refuse(node, "FusedMatMul with transBatchA/transBatchB")
    a, b = _inputs(node, 2)
    if attrs.get("transA", 0):
        a = _swap_last(e, a, e.known.rank(a) or 2)
    if attrs.get("transB", 0):
        b = _swap_last(e, b, e.known.rank(b) or 2)
    alpha = float(attrs.get("alpha", 1.0))
    product = e.op("MatMul", [a, b], None if alpha != 1.0 else node.output[0])
    if alpha != 1.0:
        e.op("Mul", [product, e.const(alpha)], node.output[0])


def _heads(e: _Emitter, x: str, heads: int) -> str:
    """[B, S, H*d] -> [B, H, S, d]"""
    split = e.op("Reshape", [x, e.const([0, 0, heads, -1], np.int64)])
    return e.op("Transpose", [split], perm=[0, 2, 1, 3])


def _merge_heads(e: _Emitter, x: str, output: str | None = None) -> str:
    """[B, H, S, d] -> [B, S, H*d]"""
    return e.op("Reshape", [e.op("Transpose", [x], perm=[0, 2, 1, 3]), e.ints([0, 0, -1])], output)


def _attend(e: _Emitter, q: str, k: str, v: str, heads: int, scale: str, additive: list[str], output: str) -> None:
    """softmax(Q K^T * scale + masks) V per head, heads merged back; scale a tensor name."""
    qh, kh, vh = _heads(e, q, heads), _heads(e, k, heads), _heads(e, v, heads)
    _merge_heads(e, _attend_heads(e, qh, kh, vh, scale, 0.0, additive), output)


def _attend_heads(e: _Emitter, q: str, k: str, v: str, scale: str, softcap: float, additive: list[str]) -> str:
    """softmax(masks + softcap(Q K^T * scale)) V on [B, heads, S, d] tensors (K and V with as many heads as Q);
    softcap(s) = c * tanh(s / c) when c > 0."""
    scores = e.op("Mul", [e.op("MatMul", [q, e.op("Transpose", [k], perm=[0, 1, 3, 2])]), scale])
    if softcap > 0:
        scores = e.op("Mul", [e.op("Tanh", [e.op("Mul", [scores, e.const(1.0 / softcap)])]), e.const(softcap)])
    for mask in additive:
        scores = e.op("Add", [scores, mask])
    return e.op("MatMul", [e.op("Softmax", [scores], axis=-1), v])


def _repeat_heads(e: _Emitter, x: str, group: int | str) -> str:
    """[B, Nkv, T, d] -> [B, Nkv * group, T, d], each key/value head repeated `group` times in a row (query head h
    reads key/value head h // group), as transformers' repeat_kv does; group an int or a 1-element tensor."""
    if isinstance(group, int) and group == 1:
        return x
    group = e.ints([group]) if isinstance(group, int) else group
    shape = e.op("Concat", [e.op("Shape", [x], start=0, end=2), group, e.op("Shape", [x], start=2)], axis=0)
    repeated = e.op("Expand", [e.op("Unsqueeze", [x, e.ints([2])]), shape])
    return e.op("Reshape", [repeated, e.op("Concat", [e.ints([0, -1]), e.op("Shape", [x], start=2)], axis=0)])


def _default_scale(e: _Emitter, head_size: int | None, like: str) -> str:
    """1 / sqrt(head size), the head size the last axis of `like` where it is not known here."""
    if head_size:
        return e.const(1.0 / math.sqrt(head_size))
    size = e.op("Cast", [e.op("Shape", [like], start=-1)], to=TensorProto.FLOAT)
    return e.op("Div", [e.const([1.0]), e.op("Sqrt", [size])])


def _additive(e: _Emitter, keep: str, allowed: str | None = None) -> str:
    """The additive mask of a boolean `keep`: 0 (or `allowed`, a float mask) where it holds, the lowest float
    elsewhere (exp gives exactly 0; one mask, so that no two lowest floats add up to -inf)."""
    return e.op("Where", [keep, allowed or e.const(0.0), e.const(LOWEST)])


def _causal_keep(e: _Emitter, queries: str, keys: str) -> str:
    """[S, T] bool: query i reads key j iff j <= i + T - S (the new queries are the last S of T positions)."""
    S, T = e.dim(queries, 2), e.dim(keys, 2)
    rows = e.op("Range", [e.const(0, np.int64), e.scalar(S), e.const(1, np.int64)])
    cols = e.op("Range", [e.const(0, np.int64), e.scalar(T), e.const(1, np.int64)])
    last = e.op("Add", [e.op("Unsqueeze", [rows, e.ints([1])]), e.op("Sub", [T, S])])
    return e.op("LessOrEqual", [e.op("Unsqueeze", [cols, e.ints([0])]), last])


def _rotate(e: _Emitter, x: str, cos: str, sin: str, interleaved: bool, rotary_dim: int | None = None,
            head_size: int | None = None) -> str:
    """Rotary embedding on the last axis of x (rank 4) with cos, sin [..., d/2] broadcastable to x's leading axes:
    x * cos' + rotate(x) * sin' on its first d dims (all of them when rotary_dim is None), the others unchanged.
    Half-split: cos' = [cos, cos], rotate(x) = [-x2, x1] (x1, x2 the halves; transformers' rotate_half);
    interleaved: cos' repeats each cos twice, rotate(x) maps the pairs (x0, x1) to (-x1, x0). Linear in x with
    coefficients that depend on the positions only. Split sizes are constants where the sizes are known here
    (what keeps the ranks known downstream), else read at run time."""
    rest = None
    if rotary_dim:
        if head_size:
            sizes = e.ints([rotary_dim, head_size - rotary_dim])
        else:
            sizes = e.op("Concat", [e.ints([rotary_dim]), e.op("Sub", [e.op("Shape", [x], start=-1),
                                                                       e.ints([rotary_dim])])], axis=0)
        x, rest = e.ops("Split", [x, sizes], 2, axis=-1)
    if interleaved:
        pairs = e.op("Reshape", [x, e.ints([0, 0, 0, -1, 2])])
        even, odd = e.ops("Split", [pairs, e.ints([1, 1])], 2, axis=-1)
        rotated = e.op("Reshape", [e.op("Concat", [e.op("Neg", [odd]), even], axis=-1), e.ints([0, 0, 0, -1])])
        cos, sin = (e.op("Reshape", [e.op("Concat", [e.op("Unsqueeze", [c, e.ints([-1])])] * 2, axis=-1),
                                     e.ints([0, 0, 0, -1])]) for c in (cos, sin))
    else:
        half = (rotary_dim or head_size or 0) // 2 or e.known.dim(cos, -1)
        if half:
            sizes = e.ints([half, half])
        else:
            width = e.op("Shape", [cos], start=-1)
            sizes = e.op("Concat", [width, width], axis=0)
        first, second = e.ops("Split", [x, sizes], 2, axis=-1)
        rotated = e.op("Concat", [e.op("Neg", [second]), first], axis=-1)
        cos, sin = (e.op("Concat", [c, c], axis=-1) for c in (cos, sin))
    out = e.op("Add", [e.op("Mul", [x, cos]), e.op("Mul", [rotated, sin])])
    return out if rest is None else e.op("Concat", [out, rest], axis=-1)


def _key_mask(e: _Emitter, mask: str, mask_rank: int, length: str, filter_value: float) -> str:
    """An additive [B, 1, 1, L] mask from a raw [B, L] mask (0 = masked) or a [B] count of valid keys; `length`
    is L, a 1-element tensor."""
    if mask_rank == 1:
        positions = e.op("Range", [e.const(0, np.int64), e.scalar(length), e.const(1, np.int64)])
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


def _attention(e: _Emitter, node) -> None:
    """com.microsoft.Attention (BERT-style: one packed QKV weight), without a decoding cache."""
    attrs = _attrs(node)
    x, weights, bias, mask, past, attention_bias = _inputs(node, 6)
    if past or attrs.get("past_present_share_buffer", 0) or any(node.output[1:]):
        raise _refuse(node, "Attention with past key/values (a decoding cache)")
    heads = int(attrs["num_heads"])
    dims = e.known.shape(weights) if e.known.is_constant(weights) else None
    if dims is None:
        raise _refuse(node, "Attention with computed weights")
    sizes = list(attrs.get("qkv_hidden_sizes", [dims[1] // 3] * 3))
    filter_value = float(attrs.get("mask_filter_value", -10000.0))
    qkv = e.op("MatMul", [x, weights])
    if bias:
        qkv = e.op("Add", [qkv, bias])
    q, k, v = e.ops("Split", [qkv, e.const(sizes, np.int64)], 3, axis=-1)
    additive = []
    if mask:
        mask_rank = e.known.rank(mask)
        if mask_rank not in (1, 2):
            raise _refuse(node, f"Attention with a mask_index of rank {mask_rank} (only [batch] lengths and "
                          "[batch, seq] masks are de-fused)")
        additive.append(_key_mask(e, mask, mask_rank, e.dim(x, 1), filter_value))
    if attrs.get("unidirectional", 0):
        additive.append(_causal_mask(e, x, filter_value))
    if attention_bias:
        additive.append(attention_bias)
    scale = attrs.get("scale") or 1.0 / math.sqrt(sizes[0] // heads)
    _attend(e, q, k, v, heads, e.const(scale), additive, node.output[0])


def _multi_head_attention(e: _Emitter, node) -> None:
    """com.microsoft.MultiHeadAttention with [batch, seq, hidden] query, key and value, and optionally a decoding
    cache: present = concat(past, new) [B, N, P + L, H] along the sequence axis; unidirectional is the causal
    mask with the past offset (query i reads key j iff j <= P + i)."""
    attrs = _attrs(node)
    (query, key, value, bias, key_padding_mask, attention_bias, past_key, past_value, past_sequence_length,
     cache_indirection) = _inputs(node, 10)
    if past_sequence_length or cache_indirection or _out(node, 3) or _out(node, 4):
        raise _refuse(node, "MultiHeadAttention with past_sequence_length, cache_indirection (beam search) or "
                      "its qk output")
    if e.known.rank(query) != 3 or key is None or e.known.rank(key) != 3 or e.known.rank(value) != 3:
        raise _refuse(node, "MultiHeadAttention with packed or 4-D inputs (only separate [batch, seq, hidden] "
                      "query, key and value are de-fused)")
    if bool(past_key) != bool(past_value):
        raise _refuse(node, "MultiHeadAttention with a past key but no past value (or the reverse)")
    heads = int(attrs["num_heads"])
    filter_value = float(attrs.get("mask_filter_value", -10000.0))
    if bias:
        parts = [e.name("bias_q"), e.name("bias_k"), e.name("bias_v")]
        e.nodes.append(helper.make_node("Split", [bias], parts, axis=0, num_outputs=3, name=e.name("Split"))
                       if e.opset >= 18 else helper.make_node("Split", [bias], parts, axis=0, name=e.name("Split")))
        query, key, value = (e.op("Add", [t, b]) for t, b in zip((query, key, value), parts))
    q, k, v = _heads(e, query, heads), _heads(e, key, heads), _heads(e, value, heads)
    if past_key:
        k = e.op("Concat", [past_key, k], _out(node, 1), axis=2)
        v = e.op("Concat", [past_value, v], _out(node, 2), axis=2)
    else:
        for j, tensor in ((1, k), (2, v)):
            if _out(node, j):
                e.op("Identity", [tensor], _out(node, j))
    additive = []
    if key_padding_mask:
        additive.append(_key_mask(e, key_padding_mask, e.known.rank(key_padding_mask) or 2, e.dim(k, 2),
                                  filter_value))
    if attrs.get("unidirectional", 0):
        additive.append(e.op("Where", [_causal_keep(e, q, k), e.const(0.0), e.const(filter_value)]))
    if attention_bias:
        additive.append(attention_bias)
    head_size = _per_head(e.known.dim(query, 2), heads)
    scale = e.const(attrs["scale"]) if attrs.get("scale") else _default_scale(e, head_size, q)
    _merge_heads(e, _attend_heads(e, q, k, v, scale, 0.0, additive), node.output[0])


def _per_head(width: int | None, heads: int) -> int | None:
    return width // heads if width else None


# GroupQueryAttention's optional inputs from the 10th on, which the de-fusing does not take
_GQA_REFUSED_INPUTS = ("position_ids", "attention_bias", "head_sink", "k_scale", "v_scale", "q_norm_weight",
                       "k_norm_weight", "query_seqlens")


def _group_query_attention(e: _Emitter, node) -> None:
    """com.microsoft.GroupQueryAttention (tools/llm_graphs.md 4.2). Positions at run time: the new tokens of entry
    b sit at P_b .. P_b + S - 1 with P_b = seqlens_k[b] + 1 - S (0 for a first prompt: S = total_sequence_length).
    The past buffer's first L_b = min(P_b, capacity) rows hold positions P_b - L_b .. P_b - 1 (the whole past, or
    a sliding window's most recent rows); the rest is unused and masked. Keys = concat(past, new) along the
    sequence axis; query i reads key j iff j is valid, j <= i (causal) and i - j < W (local_window_size W > 0)."""
    attrs = _attrs(node)
    inputs = _inputs(node, 17)
    query, key, value, past_key, past_value, seqlens_k, total_length, cos_cache, sin_cache = inputs[:9]
    given = [name for name, tensor in zip(_GQA_REFUSED_INPUTS, inputs[9:]) if tensor]
    if given:
        raise _refuse(node, f"GroupQueryAttention with {', '.join(given)}")
    if attrs.get("smooth_softmax", 0) or attrs.get("qk_output", 0) or _out(node, 3):
        raise _refuse(node, "GroupQueryAttention with smooth_softmax or its qk output")
    if any(_text(attrs.get(a, "NONE")) != "NONE" for a in ("k_quant_type", "v_quant_type")):
        raise _refuse(node, "GroupQueryAttention with a quantised cache")
    if seqlens_k is None or total_length is None or bool(key) != bool(value) or bool(past_key) != bool(past_value):
        raise _refuse(node, "GroupQueryAttention without seqlens_k / total_sequence_length, or with a key but no "
                      "value (or a past key but no past value)")
    heads, kv_heads = int(attrs["num_heads"]), int(attrs["kv_num_heads"])
    window = int(attrs.get("local_window_size", -1))
    causal = bool(attrs.get("causal", 1))
    head_size = _gqa_head_size(e, node, heads, kv_heads)
    if key is None:   # packed QKV [B, S, (N + 2 Nkv) H]
        if head_size:
            sizes = e.ints([heads * head_size, kv_heads * head_size, kv_heads * head_size])
        else:
            head = e.op("Div", [e.dim(query, 2), e.ints([heads + 2 * kv_heads])])
            sizes = e.op("Mul", [head, e.ints([heads, kv_heads, kv_heads])])
        query, key, value = e.ops("Split", [query, sizes], 3, axis=-1)
    q, k, v = _heads(e, query, heads), _heads(e, key, kv_heads), _heads(e, value, kv_heads)

    # positions of the new tokens [B, S]
    zero, one = e.const(0, np.int64), e.const(1, np.int64)
    S = e.dim(query, 1)
    last = e.op("Cast", [seqlens_k], to=TensorProto.INT64)              # T_b - 1
    first_prompt = e.op("Equal", [S, e.op("Reshape", [e.op("Cast", [total_length], to=TensorProto.INT64),
                                                        e.ints([1])])])
    past_length = e.op("Where", [first_prompt, e.ints([0]), e.op("Sub", [e.op("Add", [last, e.ints([1])]), S])])
    steps = e.op("Range", [zero, e.scalar(S), one])
    positions = e.op("Add", [e.op("Unsqueeze", [past_length, e.ints([1])]), e.op("Unsqueeze", [steps, e.ints([0])])])

    if attrs.get("do_rotary", 0):
        if cos_cache is None or sin_cache is None:
            raise _refuse(node, "GroupQueryAttention with do_rotary=1 but no cos/sin cache")
        half = e.known.dim(cos_cache, 1)
        rotary_dim = 2 * half if half and head_size != 2 * half else None
        cos, sin = (e.op("Unsqueeze", [e.op("Gather", [c, positions], axis=0), e.ints([1])])
                    for c in (cos_cache, sin_cache))                   # [B, 1, S, d/2]
        interleaved = bool(attrs.get("rotary_interleaved", 0))
        q = _rotate(e, q, cos, sin, interleaved, rotary_dim, head_size)
        k = _rotate(e, k, cos, sin, interleaved, rotary_dim, head_size)

    # keys and their positions and validity [B, rows]
    new_valid = e.op("LessOrEqual", [positions, e.op("Unsqueeze", [last, e.ints([1])])])
    if past_key:
        keys, values = (e.op("Concat", [past, new], axis=2) for past, new in ((past_key, k), (past_value, v)))
        capacity = e.dim(past_key, 2)
        held = e.op("Min", [past_length, capacity])                     # L_b
        rows = e.op("Unsqueeze", [e.op("Range", [zero, e.scalar(capacity), one]), e.ints([0])])
        past_positions = e.op("Add", [rows, e.op("Unsqueeze", [e.op("Sub", [past_length, held]), e.ints([1])])])
        past_valid = e.op("Less", [rows, e.op("Unsqueeze", [held, e.ints([1])])])
        key_positions = e.op("Concat", [past_positions, positions], axis=1)
        key_valid = e.op("Concat", [past_valid, new_valid], axis=1)
    else:
        keys, values, key_positions, key_valid = k, v, positions, new_valid
        capacity = held = None
    query_at = e.op("Unsqueeze", [positions, e.ints([2])])               # [B, S, 1]
    key_at = e.op("Unsqueeze", [key_positions, e.ints([1])])             # [B, 1, rows]
    keep = e.op("Unsqueeze", [key_valid, e.ints([1])])
    if causal:
        keep = e.op("And", [keep, e.op("LessOrEqual", [key_at, query_at])])
    if window > 0:
        keep = e.op("And", [keep, e.op("Less", [e.op("Sub", [query_at, key_at]), e.ints([window])])])
    mask = e.op("Unsqueeze", [_additive(e, keep), e.ints([1])])          # [B, 1, S, rows]

    group = heads // kv_heads
    scale = e.const(attrs["scale"]) if attrs.get("scale") else _default_scale(e, head_size, q)
    attended = _attend_heads(e, q, _repeat_heads(e, keys, group), _repeat_heads(e, values, group), scale,
                             float(attrs.get("softcap", 0.0)), [mask])
    _merge_heads(e, attended, node.output[0])

    if _out(node, 1) or _out(node, 2):
        sliding = bool(attrs.get("sliding_window_cache", 0)) and window > 0
        index = _gqa_present_rows(e, keys, S, past_length, last, total_length, capacity, held, sliding, window)
        for j, tensor in ((1, keys), (2, values)):
            if _out(node, j):
                _gather_rows(e, tensor, index, _out(node, j))


def _gqa_head_size(e: _Emitter, node, heads: int, kv_heads: int) -> int | None:
    """The head size, from whichever of the query, key, output or past is known here (onnx cannot infer the
    outputs of other fused ops upstream, such as MatMulNBits; an exporter's value_info may say)."""
    query, key, _, past_key = _inputs(node, 4)
    widths = [(query, 2, heads + 2 * kv_heads if key is None else heads), (key, 2, kv_heads),
              (node.output[0], 2, heads), (past_key, 3, 1)]
    for tensor, axis, per in widths:
        size = e.known.dim(tensor, axis) if tensor else None
        if size:
            return size // per
    return None


def _gqa_present_rows(e: _Emitter, keys: str, S: str, past_length: str, last: str, total_length: str,
                      capacity: str | None, held: str | None, sliding: bool, window: int) -> str:
    """Which row of concat(past, new, a zero row) each row of GroupQueryAttention's present is, [B, rows]: the held
    past then the new rows, up to max(capacity, total_sequence_length) rows; or, with a window-sized cache
    (sliding_window_cache), the last min(T_b, W) positions from row 0, up to the capacity. The rows after them
    (which onnxruntime leaves unwritten, and no later step reads) are zeros."""
    zero, one = e.const(0, np.int64), e.const(1, np.int64)
    capacity = capacity or e.ints([0])
    held = held or e.op("Mul", [past_length, e.ints([0])])
    new_at = capacity                                                   # the first new row in concat(past, new)
    zero_row = e.op("Add", [capacity, S])
    held_, past_ = (e.op("Unsqueeze", [t, e.ints([1])]) for t in (held, past_length))
    if sliding:
        total = e.op("Add", [last, e.ints([1])])                         # T_b
        kept = e.op("Min", [total, e.ints([window])])
        start = e.op("Unsqueeze", [e.op("Sub", [total, kept]), e.ints([1])])
        rows = e.op("Unsqueeze", [e.op("Range", [zero, e.scalar(capacity), one]), e.ints([0])])
        at = e.op("Add", [start, rows])                                  # the position row r holds
        from_past = e.op("Sub", [at, e.op("Sub", [past_, held_])])
        from_new = e.op("Add", [new_at, e.op("Sub", [at, past_])])
        index = e.op("Where", [e.op("Less", [at, past_]), from_past, from_new])
        filled = e.op("Less", [rows, e.op("Unsqueeze", [kept, e.ints([1])])])
    else:
        length = e.op("Max", [capacity, e.op("Reshape", [e.op("Cast", [total_length], to=TensorProto.INT64),
                                                         e.ints([1])])])
        rows = e.op("Unsqueeze", [e.op("Range", [zero, e.scalar(length), one]), e.ints([0])])
        from_new = e.op("Add", [new_at, e.op("Sub", [rows, held_])])
        index = e.op("Where", [e.op("Less", [rows, held_]), rows, from_new])
        filled = e.op("Less", [rows, e.op("Add", [held_, S])])
    return e.op("Where", [filled, index, zero_row])


def _gather_rows(e: _Emitter, tensor: str, index: str, output: str) -> None:
    """output[b, h, r] = concat(tensor, zeros)[b, h, index[b, r]] on [B, heads, rows, d] tensors."""
    zeros = e.op("ConstantOfShape", [e.op("Concat", [e.op("Shape", [tensor], start=0, end=2), e.ints([1]),
                                                     e.op("Shape", [tensor], start=3)], axis=0)],
                 value=helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0]))
    padded = e.op("Concat", [tensor, zeros], axis=2)
    rows = e.op("Unsqueeze", [index, e.ints([1, 3])])                    # [B, 1, rows, 1]
    shape = e.op("Concat", [e.op("Shape", [tensor], start=0, end=2), e.op("Shape", [index], start=1),
                            e.op("Shape", [tensor], start=3)], axis=0)
    e.op("GatherElements", [padded, e.op("Expand", [rows, shape])], output, axis=2)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _onnx_attention(e: _Emitter, node) -> None:
    """ONNX Attention (opset 23): Q, K, V 4-D [B, heads, S, H] or 3-D [B, S, heads * H] (q_num_heads,
    kv_num_heads); present = concat(past, new) along the sequence axis; key/value heads repeated to the query's;
    scores scaled, soft-capped, then masked: is_causal keeps j <= i + P (bottom-right), a boolean attn_mask keeps
    where true, a float one is added."""
    attrs = _attrs(node)
    Q, K, V, attn_mask, past_key, past_value = _inputs(node, 6)
    if _out(node, 3):
        raise _refuse(node, "Attention with its qk_matmul_output")
    if bool(past_key) != bool(past_value):
        raise _refuse(node, "Attention with a past key but no past value (or the reverse)")
    rank = e.known.rank(Q)
    if rank not in (3, 4):
        raise _refuse(node, f"Attention with a query of rank {rank}")
    if rank == 3:
        q_heads, kv_heads = int(attrs.get("q_num_heads", 0)), int(attrs.get("kv_num_heads", 0))
        if not q_heads or not kv_heads:
            raise _refuse(node, "Attention with 3-D inputs but no q_num_heads / kv_num_heads")
        q, k, v = _heads(e, Q, q_heads), _heads(e, K, kv_heads), _heads(e, V, kv_heads)
        group = q_heads // kv_heads
        head_size = _per_head(e.known.dim(Q, 2), q_heads)
    else:
        q, k, v = Q, K, V
        q_heads, kv_heads = e.known.dim(Q, 1), e.known.dim(K, 1)
        if q_heads and kv_heads:
            group = q_heads // kv_heads
        else:
            group = e.op("Div", [e.dim(Q, 1), e.dim(K, 1)])
        head_size = e.known.dim(Q, 3)
    if past_key:
        k = e.op("Concat", [past_key, k], _out(node, 1), axis=2)
        v = e.op("Concat", [past_value, v], _out(node, 2), axis=2)
    else:
        for j, tensor in ((1, k), (2, v)):
            if _out(node, j):
                e.op("Identity", [tensor], _out(node, j))
    masks = []
    keep = _causal_keep(e, q, k) if attrs.get("is_causal", 0) else None
    if attn_mask and e.known.elem_type(attn_mask) == TensorProto.BOOL:
        keep = attn_mask if keep is None else e.op("And", [keep, attn_mask])
        masks.append(_additive(e, keep))
    elif attn_mask:
        masks.append(attn_mask if keep is None else _additive(e, keep, attn_mask))
    elif keep is not None:
        masks.append(_additive(e, keep))
    scale = e.const(attrs["scale"]) if attrs.get("scale") else _default_scale(e, head_size, q)
    attended = _attend_heads(e, q, _repeat_heads(e, k, group), _repeat_heads(e, v, group), scale,
                             float(attrs.get("softcap", 0.0)), masks)
    if rank == 3:
        _merge_heads(e, attended, node.output[0])
    else:
        e.op("Identity", [attended], node.output[0])


def _rotary_embedding(e: _Emitter, node, onnx_order: bool) -> None:
    """RotaryEmbedding, com.microsoft (input, position_ids, cos_cache, sin_cache) or ONNX opset 23 (X, cos_cache,
    sin_cache, position_ids?; without position_ids the caches are per token [B, S, d/2]): x 3-D [B, S, N * H]
    (num_heads, else H = 2 * the caches' width) or 4-D [B, N, S, H]; the caches' rows gathered at the positions
    (a 1-element position_ids is the first position); rotary_embedding_dim rotates the first d dims only."""
    attrs = _attrs(node)
    if attrs.get("is_packed_batching", 0):
        raise _refuse(node, "RotaryEmbedding with is_packed_batching")
    if onnx_order:
        x, cos_cache, sin_cache, position_ids = _inputs(node, 4)
    else:
        x, position_ids, cos_cache, sin_cache = _inputs(node, 4)
    rank = e.known.rank(x)
    heads = int(attrs.get("num_heads", 0))
    rotary_dim = int(attrs.get("rotary_embedding_dim", 0)) or None
    if rank == 3:
        if heads:
            x4 = e.op("Reshape", [x, e.ints([0, 0, heads, -1])])
        else:
            half = e.known.dim(cos_cache, -1)
            if not half or rotary_dim:
                raise _refuse(node, "RotaryEmbedding of a 3-D input without num_heads")
            x4 = e.op("Reshape", [x, e.ints([0, 0, -1, 2 * half])])
        head_axis = 2                                                    # [B, S, N, H]
        head_size = _per_head(e.known.dim(x, 2), heads) if heads else None
    elif rank == 4:
        x4, head_axis, head_size = x, 1, e.known.dim(x, 3)              # [B, N, S, H]
    else:
        raise _refuse(node, f"RotaryEmbedding of an input of rank {rank}")
    if rotary_dim and rotary_dim == head_size:
        rotary_dim = None
    if position_ids is None:
        cos, sin = cos_cache, sin_cache                                  # per token [B, S, d/2]
    else:
        positions = position_ids
        if e.known.rank(position_ids) == 1:                              # the first position: start + 0..S-1
            S = e.dim(x, 1 if rank == 3 else 2)
            steps = e.op("Range", [e.const(0, np.int64), e.scalar(S), e.const(1, np.int64)])
            positions = e.op("Unsqueeze", [e.op("Add", [e.op("Cast", [position_ids], to=TensorProto.INT64), steps]),
                                           e.ints([0])])
        cos, sin = (e.op("Gather", [c, positions], axis=0) for c in (cos_cache, sin_cache))
    cos, sin = (e.op("Unsqueeze", [c, e.ints([head_axis])]) for c in (cos, sin))
    if head_size is None and not rotary_dim:
        half = e.known.dim(cos_cache, -1)
        head_size = 2 * half if half else None
    rotated = _rotate(e, x4, cos, sin, bool(attrs.get("interleaved", 0)), rotary_dim, head_size)
    if rank == 3:
        e.op("Reshape", [rotated, e.ints([0, 0, -1])], node.output[0])
    else:
        e.op("Identity", [rotated], node.output[0])


def _rms_normalization(e: _Emitter, node) -> None:
    """ONNX RMSNormalization (opset 23): x / sqrt(mean(x^2 over axis..last) + epsilon) * scale, decomposed into the
    chain whose sigma the analysis holds constant."""
    attrs = _attrs(node)
    x, scale = _inputs(node, 2)
    e.layer_norm(x, scale, None, float(attrs.get("epsilon", 1e-5)), int(attrs.get("axis", -1)), node.output[0],
                 simplified=True)


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
                                 "standard ops; explain the model exported without this fused op (torch.onnx, "
                                 "optimum, or before onnxruntime's transformer optimizer)")


# (domain, op type) -> what it becomes: each takes (emitter, node)
DEFUSERS = {
    (CONTRIB, "SkipLayerNormalization"): lambda e, n: _skip_layer_norm(e, n, simplified=False),
    (CONTRIB, "SkipSimplifiedLayerNormalization"): lambda e, n: _skip_layer_norm(e, n, simplified=True),
    (CONTRIB, "SimplifiedLayerNormalization"): _simplified_layer_norm,
    ("", "SimplifiedLayerNormalization"): _simplified_layer_norm,   # onnxruntime defines it in the onnx domain
    (CONTRIB, "LayerNormalization"): _layer_norm,
    (CONTRIB, "BiasGelu"): lambda e, n: _gelu(e, n, tanh=False),
    (CONTRIB, "Gelu"): lambda e, n: _gelu(e, n, tanh=False),
    (CONTRIB, "FastGelu"): lambda e, n: _gelu(e, n, tanh=True),
    (CONTRIB, "QuickGelu"): _quick_gelu,
    (CONTRIB, "FusedMatMul"): _fused_matmul,
    (CONTRIB, "Attention"): _attention,
    (CONTRIB, "MultiHeadAttention"): _multi_head_attention,
    (CONTRIB, "GroupQueryAttention"): _group_query_attention,
    (CONTRIB, "RotaryEmbedding"): lambda e, n: _rotary_embedding(e, n, onnx_order=False),
    (CONTRIB, "EmbedLayerNormalization"): _embed_layer_norm,
    ("", "Attention"): _onnx_attention,                               # opset 23
    ("", "RotaryEmbedding"): lambda e, n: _rotary_embedding(e, n, onnx_order=True),
    ("", "RMSNormalization"): _rms_normalization,
}


def _key(node: onnx.NodeProto) -> tuple[str, str]:
    return ("" if node.domain == "ai.onnx" else node.domain, node.op_type)


def _fused(node: onnx.NodeProto) -> bool:
    return _key(node) in DEFUSERS


def defuse_contrib_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    if not any(_fused(n) for n in graph.node):
        return model
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    known = _Known(model)
    original = list(graph.node)
    read = {name for n in original for name in n.input} | {o.name for o in graph.output}
    nodes, initializers = [], []
    for k, node in enumerate(original):
        if not _fused(node):
            nodes.append(node)
            continue
        known.changed(nodes + original[k:], initializers)
        e = _Emitter(node, opset, initializers, known)
        DEFUSERS[_key(node)](e, node)
        made = {o for n in e.nodes for o in n.output}
        missing = [j for j, o in enumerate(node.output) if o and o in read and o not in made]
        if missing:
            raise _refuse(node, f"{node.op_type} with its output {missing[0]} in use")
        nodes.extend(e.nodes)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    if not any(n.domain == CONTRIB for n in graph.node):
        kept = [o for o in model.opset_import if o.domain != CONTRIB]
        del model.opset_import[:]
        model.opset_import.extend(kept)
    return model
