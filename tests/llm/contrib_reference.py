"""numpy re-statements of the fused ops that served LLM graphs carry (onnxruntime's com.microsoft contrib ops,
the ONNX opset-23 ops, and the quantisation ops), written from their specifications (onnxruntime's
ContribOperators page in its docs folder, the ONNX operator docs) and checked against onnxruntime in test_contrib_semantics.py.
They are the oracles for de-fusing these ops into plain ONNX; tools/llm_graphs.md states the same formulas.

Shapes: B batch, S new tokens, P past tokens, T = P + S, N query heads, Nkv key/value heads, H head size.
"""
from __future__ import annotations

import numpy as np

# --- rotary embedding --------------------------------------------------------------------------------------

def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, interleaved: bool, rotary_dim: int = 0) -> np.ndarray:
    """RoPE on the last axis of x [..., S, H] with cos, sin [S, rotary_dim / 2] (already gathered per position).
    Half-split (interleaved=0): x1 = x[:d/2], x2 = x[d/2:d]; out = [x1 cos - x2 sin, x2 cos + x1 sin].
    Interleaved: pairs (x[2i], x[2i+1]) -> (x[2i] cos_i - x[2i+1] sin_i, x[2i+1] cos_i + x[2i] sin_i).
    Dimensions from rotary_dim on (0 = all) pass unchanged."""
    d = rotary_dim or x.shape[-1]
    part, rest = x[..., :d], x[..., d:]
    if interleaved:
        x1, x2 = part[..., 0::2], part[..., 1::2]
        out = np.empty_like(part)
        out[..., 0::2] = x1 * cos - x2 * sin
        out[..., 1::2] = x2 * cos + x1 * sin
    else:
        x1, x2 = part[..., :d // 2], part[..., d // 2:]
        out = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)
    return np.concatenate([out, rest], -1)


def rope_caches(max_positions: int, rotary_dim: int, base: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin caches [max_positions, rotary_dim / 2]: angle(p, i) = p * base^(-2i / rotary_dim)."""
    inv = base ** (-np.arange(0, rotary_dim, 2) / rotary_dim)
    angles = np.arange(max_positions)[:, None] * inv[None]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def rotary_embedding_ms(x, position_ids, cos_cache, sin_cache, interleaved=0, num_heads=0, rotary_embedding_dim=0):
    """com.microsoft.RotaryEmbedding(input, position_ids, cos_cache, sin_cache): input [B, S, N*H] (num_heads
    given or H = 2 * cos_cache.shape[1]) or [B, N, S, H]; position_ids [B, S] (or [1] in older models: the
    start position, positions start + arange(S))."""
    return _rotary(x, position_ids, cos_cache, sin_cache, interleaved, num_heads, rotary_embedding_dim)


def rotary_embedding_onnx(x, cos_cache, sin_cache, position_ids=None, interleaved=0, num_heads=0,
                          rotary_embedding_dim=0):
    """ONNX opset-23 RotaryEmbedding(X, cos_cache, sin_cache, position_ids?): the same rotation, another input
    order; without position_ids the caches are already per token, [B, S, rotary_dim / 2]."""
    return _rotary(x, position_ids, cos_cache, sin_cache, interleaved, num_heads, rotary_embedding_dim)


def _rotary(x, position_ids, cos_cache, sin_cache, interleaved, num_heads, rotary_dim):
    four_d = x.ndim == 4
    if four_d:                     # [B, N, S, H] -> [B, S, N, H]
        x = x.transpose(0, 2, 1, 3)
    else:
        B, S, hidden = x.shape
        heads = num_heads or hidden // (2 * cos_cache.shape[-1])
        x = x.reshape(B, S, heads, hidden // heads)
    if position_ids is None:
        cos, sin = cos_cache, sin_cache                      # [B, S, d/2]
    else:
        position_ids = np.asarray(position_ids)
        if position_ids.size == 1:
            position_ids = position_ids.reshape(1, 1) + np.arange(x.shape[1])[None]
        cos, sin = cos_cache[position_ids], sin_cache[position_ids]   # [B, S, d/2]
    y = rotate(x, cos[:, :, None, :], sin[:, :, None, :], bool(interleaved), rotary_dim)
    return y.transpose(0, 2, 1, 3) if four_d else y.reshape(y.shape[0], y.shape[1], -1)


# --- attention ---------------------------------------------------------------------------------------------

def softmax(scores: np.ndarray, keep: np.ndarray) -> np.ndarray:
    scores = np.where(keep, scores, -np.inf)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def attend(q, k, v, scale, keep, softcap=0.0):
    """q [B, N, S, H], k and v [B, Nkv, T, H]: query head h reads key/value head h // (N / Nkv);
    scores = scale q k^T, then softcap * tanh(scores / softcap) when softcap > 0, then the mask, Softmax, P v."""
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, 1), np.repeat(v, group, 1)
    scores = scale * q @ k.transpose(0, 1, 3, 2)
    if softcap > 0:
        scores = softcap * np.tanh(scores / softcap)
    return softmax(scores, keep) @ v


def causal_keep(S: int, P: int, window: int = -1) -> np.ndarray:
    """[S, T]: query i (absolute position P + i) reads key j iff j <= P + i, and, with a local window W > 0,
    P + i - j < W (W keys including its own)."""
    i = (P + np.arange(S))[:, None]
    j = np.arange(P + S)[None]
    keep = j <= i
    if window is not None and window > 0:
        keep &= i - j < window
    return keep


def group_query_attention(query, key=None, value=None, past_key=None, past_value=None, seqlens_k=None,
                          total_sequence_length=None, cos_cache=None, sin_cache=None, *, num_heads, kv_num_heads,
                          scale=0.0, softcap=0.0, local_window_size=-1, do_rotary=0, rotary_interleaved=0):
    """com.microsoft.GroupQueryAttention for equal-length batch entries (seqlens_k[b] = T - 1 for every b).
    query [B, S, N*H], or packed QKV [B, S, (N + 2 Nkv) H] with key and value absent; key, value
    [B, S, Nkv*H]; past_key, past_value [B, Nkv, P, H] (BNSH); positions of the new tokens P .. T-1 with
    P = seqlens_k + 1 - S. Rotary (do_rotary) rotates q and k at those positions before k enters the cache;
    present = concat(past, new k or v) on the sequence axis; causal mask with the past offset and the local
    window; scale defaults to 1/sqrt(H). Returns output [B, S, N*H], present_key, present_value."""
    B, S, width = query.shape
    if key is None:                                   # packed QKV
        H = width // (num_heads + 2 * kv_num_heads)
        query, key, value = np.split(query, [num_heads * H, (num_heads + kv_num_heads) * H], -1)
    H = query.shape[-1] // num_heads
    T = int(np.asarray(seqlens_k).reshape(-1)[0]) + 1 if seqlens_k is not None else S
    P = T - S
    q = query.reshape(B, S, num_heads, H).transpose(0, 2, 1, 3)
    k = key.reshape(B, S, kv_num_heads, H).transpose(0, 2, 1, 3)
    v = value.reshape(B, S, kv_num_heads, H).transpose(0, 2, 1, 3)
    if do_rotary:
        positions = P + np.arange(S)
        cos, sin = cos_cache[positions], sin_cache[positions]
        q, k = rotate(q, cos, sin, bool(rotary_interleaved)), rotate(k, cos, sin, bool(rotary_interleaved))
    if past_key is not None and past_key.shape[2]:
        k, v = np.concatenate([past_key[:, :, :P], k], 2), np.concatenate([past_value[:, :, :P], v], 2)
    out = attend(q, k, v, scale or 1 / np.sqrt(H), causal_keep(S, P, local_window_size), softcap)
    return out.transpose(0, 2, 1, 3).reshape(B, S, num_heads * H), k, v


def multi_head_attention(query, key, value, bias=None, past_key=None, past_value=None, *, num_heads, scale=0.0,
                         unidirectional=0):
    """com.microsoft.MultiHeadAttention(query, key, value, bias?, key_padding_mask?, attention_bias?, past_key?,
    past_value?) with 3D query [B, S, N*H] and key/value [B, L, N*H]: bias [3 N H] added to q, k, v;
    present = concat(past, new) [B, N, P + L, H]; unidirectional=1 is the causal mask with the past offset."""
    B, S, width = query.shape
    H = width // num_heads
    if bias is not None:
        bq, bk, bv = np.split(bias, 3)
        query, key, value = query + bq, key + bk, value + bv
    L = key.shape[1]
    q = query.reshape(B, S, num_heads, H).transpose(0, 2, 1, 3)
    k = key.reshape(B, L, num_heads, H).transpose(0, 2, 1, 3)
    v = value.reshape(B, L, num_heads, H).transpose(0, 2, 1, 3)
    if past_key is not None:
        k, v = np.concatenate([past_key, k], 2), np.concatenate([past_value, v], 2)
    P = k.shape[2] - S
    keep = causal_keep(S, P) if unidirectional else np.ones((S, k.shape[2]), bool)
    out = attend(q, k, v, scale or 1 / np.sqrt(H), keep)
    return out.transpose(0, 2, 1, 3).reshape(B, S, width), k, v


def onnx_attention(Q, K, V, attn_mask=None, past_key=None, past_value=None, *, is_causal=0, scale=0.0, softcap=0.0,
                   q_num_heads=0, kv_num_heads=0):
    """ONNX opset-23 Attention(Q, K, V, attn_mask?, past_key?, past_value?): 4D [B, heads, S, H] or 3D with
    q_num_heads / kv_num_heads; present = concat(past, new); is_causal: query i reads key j iff j <= i + P
    (bottom-right alignment); attn_mask boolean (True = attend) or float (added); softcap before the mask."""
    three_d = Q.ndim == 3
    if three_d:
        B, S, _ = Q.shape
        Q = Q.reshape(B, S, q_num_heads, -1).transpose(0, 2, 1, 3)
        K = K.reshape(B, K.shape[1], kv_num_heads, -1).transpose(0, 2, 1, 3)
        V = V.reshape(B, V.shape[1], kv_num_heads, -1).transpose(0, 2, 1, 3)
    if past_key is not None:
        K, V = np.concatenate([past_key, K], 2), np.concatenate([past_value, V], 2)
    S, T, H = Q.shape[2], K.shape[2], Q.shape[3]
    group = Q.shape[1] // K.shape[1]
    k, v = np.repeat(K, group, 1), np.repeat(V, group, 1)
    scores = (scale or 1 / np.sqrt(H)) * Q @ k.transpose(0, 1, 3, 2)
    if softcap > 0:
        scores = softcap * np.tanh(scores / softcap)
    keep = np.ones((S, T), bool)
    if is_causal:
        keep = causal_keep(S, T - S)
    if attn_mask is not None and attn_mask.dtype == bool:
        keep = keep & attn_mask
    elif attn_mask is not None:
        scores = scores + attn_mask
    out = softmax(scores, keep) @ v
    if three_d:
        out = out.transpose(0, 2, 1, 3).reshape(out.shape[0], S, -1)
    return out, K, V


# --- normalisation -----------------------------------------------------------------------------------------

def rms_norm(x, scale, epsilon=1e-5, axis=-1):
    """RMSNormalization (opset 23) and SimplifiedLayerNormalization (ORT, default domain):
    y = x / sqrt(mean(x^2 over axes axis..last) + epsilon) * scale."""
    axes = tuple(range(axis % x.ndim, x.ndim))
    return x / np.sqrt((x * x).mean(axes, keepdims=True) + epsilon) * scale


def skip_simplified_layer_norm(x, skip, gamma, bias=None, epsilon=1e-5):
    """com.microsoft.SkipSimplifiedLayerNormalization(input, skip, gamma, bias?): s = input + skip (+ bias);
    output 0 = rms_norm(s) * gamma, output 3 (input_skip_bias_sum) = s (the residual stream)."""
    s = x + skip + (0 if bias is None else bias)
    return rms_norm(s, gamma, epsilon), s


# --- quantisation ------------------------------------------------------------------------------------------

def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Unsigned `bits`-bit values packed little-end first in uint8 along the last axis (4 bits: element 2j in
    the low nibble of byte j, 2j+1 in the high nibble); the first `count` values."""
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    values = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return values.reshape(*packed.shape[:-1], -1)[..., :count]


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """The inverse of unpack_bits along the last axis (padded with zeros to whole bytes)."""
    per_byte = 8 // bits
    pad = (-values.shape[-1]) % per_byte
    v = np.concatenate([values, np.zeros((*values.shape[:-1], pad), values.dtype)], -1).astype(np.uint8)
    v = v.reshape(*v.shape[:-1], -1, per_byte)
    return np.bitwise_or.reduce(v << (np.arange(per_byte, dtype=np.uint8) * bits), axis=-1).astype(np.uint8)


def matmul_nbits_weight(B, scales, zero_points, *, K, N, bits, block_size):
    """The dequantised weight W [K, N] of com.microsoft.MatMulNBits: B uint8 [N, n_blocks, block_size * bits / 8]
    (each block's values packed along K, low bits first), scales [N, n_blocks] (or flat [N * n_blocks]),
    zero_points packed uint8 [N, ceil(n_blocks * bits / 8)] (same packing along the blocks), or float
    [N, n_blocks], or absent: 2^(bits-1) (8 for 4 bits, 128 for 8 bits). W^T[n, k] = (q[n, k] - zp[n, k // block])
    * scale[n, k // block]; a last, partial block is padded and the padding dropped."""
    n_blocks = -(-K // block_size)
    q = unpack_bits(B.reshape(N, n_blocks, -1), bits, block_size).reshape(N, -1)[:, :K].astype(np.float32)
    scales = np.asarray(scales, np.float32).reshape(N, n_blocks)
    if zero_points is None:
        zp = np.full((N, n_blocks), 2 ** (bits - 1), np.float32)
    elif zero_points.dtype == np.uint8:
        zp = unpack_bits(zero_points.reshape(N, -1), bits, n_blocks).astype(np.float32)
    else:
        zp = np.asarray(zero_points, np.float32).reshape(N, n_blocks)
    block = np.arange(K) // block_size
    return ((q - zp[:, block]) * scales[:, block]).T


def matmul_nbits(A, B, scales, zero_points=None, bias=None, *, K, N, bits=4, block_size):
    """Y = A @ W (+ bias), W from matmul_nbits_weight."""
    y = A @ matmul_nbits_weight(B, scales, zero_points, K=K, N=N, bits=bits, block_size=block_size)
    return y if bias is None else y + bias


def quantize_blockwise(W: np.ndarray, bits: int, block_size: int, symmetric: bool, rng=None):
    """A test weight W [K, N] quantised the MatMulNBits way: (B, scales, zero_points or None)."""
    K, N = W.shape
    n_blocks = -(-K // block_size)
    padded = np.zeros((n_blocks * block_size, N), np.float32)
    padded[:K] = W
    blocks = padded.T.reshape(N, n_blocks, block_size)
    top = 2 ** bits - 1
    if symmetric:
        scale = np.abs(blocks).max(-1) / (2 ** (bits - 1) - 0.5) + 1e-8
        zp = np.full_like(scale, 2 ** (bits - 1))
    else:
        lo, hi = np.minimum(blocks.min(-1), 0), np.maximum(blocks.max(-1), 0)
        scale = (hi - lo) / top + 1e-8
        zp = np.clip(np.round(-lo / scale), 0, top)
    q = np.clip(np.round(blocks / scale[..., None] + zp[..., None]), 0, top).astype(np.uint8)
    B = pack_bits(q, bits).reshape(N, n_blocks, -1)
    zero_points = None if symmetric else pack_bits(zp.astype(np.uint8), bits)
    return B, scale.astype(np.float32), zero_points


def gather_block_quantized(data, indices, scales, zero_points=None, *, bits=4, block_size=128, packed=None,
                           gather_axis=0, quantize_axis=1):
    """com.microsoft.GatherBlockQuantized with gather_axis 0 and quantize_axis the last axis of a 2D table:
    data either uint8 [rows, cols * bits / 8], `bits`-bit values packed low bits first (packed), or an int4 /
    uint4 tensor [rows, cols] (given here as its values, packed=False: what the genai builder writes); scales
    [rows, cols / block_size]; zero_points of the data's kind (absent: 2^(bits-1) for packed uint8, 0 for
    int4/uint4). output[..., c] = (q[idx, c] - zp[idx, c // block]) * scale[idx, c // block]."""
    assert gather_axis == 0 and quantize_axis in (1, -1)
    packed = data.dtype == np.uint8 if packed is None else packed
    rows, n_blocks = scales.shape
    cols = n_blocks * block_size
    q = unpack_bits(data, bits, cols).astype(np.float32) if packed else data.astype(np.float32)
    if zero_points is None:
        zp = np.full((rows, n_blocks), 2 ** (bits - 1) if packed else 0, np.float32)
    elif packed:
        zp = unpack_bits(zero_points, bits, n_blocks).astype(np.float32)
    else:
        zp = zero_points.astype(np.float32)
    block = np.arange(cols) // block_size
    table = (q - zp[:, block]) * scales[:, block]
    return table[np.asarray(indices)]


def dequantize_linear(x, scale, zero_point=None, axis=1, block_size=0):
    """DequantizeLinear: y = (x - zero_point) * scale, per tensor (scalar scale), per axis (1-D scale along
    `axis`) or blocked (opset 21: scale shaped like x with dimension `axis` divided by block_size)."""
    x = x.astype(np.float32)
    zp = np.zeros_like(scale) if zero_point is None else zero_point.astype(np.float32)
    scale = np.asarray(scale, np.float32)
    if scale.ndim == 0:
        return (x - zp) * scale
    if block_size:
        scale, zp = np.repeat(scale, block_size, axis), np.repeat(zp, block_size, axis)
        return (x - zp) * scale
    shape = [1] * x.ndim
    shape[axis] = -1
    return (x - zp.reshape(shape)) * scale.reshape(shape)


def dynamic_quantize_linear(x):
    """DynamicQuantizeLinear: scale = (max(0, max x) - min(0, min x)) / 255, zero_point = clip(round(-min / scale)),
    y = clip(round(x / scale) + zero_point, 0, 255) (rounding half to even); returns y, scale, zero_point."""
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = np.float32((hi - lo) / 255)
    zero_point = np.uint8(np.clip(np.round(-lo / scale), 0, 255))
    y = np.clip(np.round(x / scale) + zero_point, 0, 255).astype(np.uint8)
    return y, scale, zero_point


def qlinear_matmul(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp):
    """QLinearMatMul: y = saturate(round(((a - a_zp) @ (b - b_zp)) * a_scale * b_scale / y_scale) + y_zp); b_scale
    and b_zp may be per output column."""
    acc = (a.astype(np.int32) - np.int32(a_zp)) @ (b.astype(np.int32) - b_zp.astype(np.int32))
    real = acc * (np.float32(a_scale) * b_scale)
    info = np.iinfo(y_zp.dtype)
    return np.clip(np.round(real / y_scale) + y_zp.astype(np.int32), info.min, info.max).astype(y_zp.dtype)


def matmul_integer(a, b, a_zp, b_zp):
    """MatMulInteger: int32 (a - a_zp) @ (b - b_zp)."""
    return (a.astype(np.int32) - np.int32(a_zp)) @ (b.astype(np.int32) - b_zp.astype(np.int32))
