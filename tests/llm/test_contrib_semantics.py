"""The numpy statements in contrib_reference.py reproduce onnxruntime's one-node models of the fused and
quantised ops in served LLM graphs (to 1e-5), so that they can serve as the oracles of their de-fusing.
Needs onnxruntime only."""
from __future__ import annotations

import contrib_reference as R
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

ort = pytest.importorskip("onnxruntime")
RNG = np.random.default_rng(0)
TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32,
         np.dtype(np.int64): TensorProto.INT64, np.dtype(np.uint8): TensorProto.UINT8,
         np.dtype(np.int8): TensorProto.INT8, np.dtype(bool): TensorProto.BOOL}


def run_node(op, inputs: dict, outputs: int = 1, domain: str = "", opset: int = 23, constants=None, **attrs):
    """One node fed by `inputs` (None: an omitted optional input; names in `constants` become initialisers,
    as the weights of served graphs are), run on onnxruntime's CPU provider."""
    constants = constants or {}
    names = [name if value is not None else "" for name, value in inputs.items()]
    node = helper.make_node(op, names, [f"y{i}" for i in range(outputs)], domain=domain, **attrs)
    feeds = {n: v for n, v in inputs.items() if v is not None and n not in constants}
    graph = helper.make_graph(
        [node], "one", [helper.make_tensor_value_info(n, TYPES[v.dtype], v.shape) for n, v in feeds.items()],
        [onnx.ValueInfoProto(name=f"y{i}") for i in range(outputs)],
        [c if isinstance(c, TensorProto) else onnx.numpy_helper.from_array(c, n) for n, c in constants.items()])
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def close(actual, expected, tol=1e-5):
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)


def normal(*shape):
    return RNG.normal(size=shape).astype(np.float32)


# --- GroupQueryAttention -----------------------------------------------------------------------------------

GQA = dict(num_heads=4, kv_num_heads=2)
H = 16   # the CPU kernel wants head_size % 16 == 0 with do_rotary


def gqa_inputs(batch, new, past, packed=False, rotary=True):
    q, k, v = normal(batch, new, 4 * H), normal(batch, new, 2 * H), normal(batch, new, 2 * H)
    cos, sin = R.rope_caches(64, H)
    inputs = {"query": np.concatenate([q, k, v], -1) if packed else q, "key": None if packed else k,
              "value": None if packed else v,
              "past_key": normal(batch, 2, past, H), "past_value": normal(batch, 2, past, H),
              "seqlens_k": np.full(batch, past + new - 1, np.int32),
              "total_sequence_length": np.array(past + new, np.int32),
              "cos_cache": cos if rotary else None, "sin_cache": sin if rotary else None}
    return inputs


@pytest.mark.parametrize("past", [0, 5])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("interleaved", [0, 1])
def test_gqa_rotary_past_packed(past, packed, interleaved):
    batch, new = (2, 6) if past == 0 else (1, 3)   # with a past, S > 1 needs batch 1 (the op's rule)
    inputs = gqa_inputs(batch, new, past, packed)
    if past == 0:   # the builder's empty past: [B, Nkv, 0, H]
        inputs["past_key"], inputs["past_value"] = np.zeros((batch, 2, 0, H), np.float32), np.zeros(
            (batch, 2, 0, H), np.float32)
    attrs = dict(**GQA, do_rotary=1, rotary_interleaved=interleaved)
    out, present_k, present_v = run_node("GroupQueryAttention", inputs, 3, "com.microsoft", **attrs)
    expected = R.group_query_attention(**inputs, **attrs)
    close(out, expected[0])
    close(present_k, expected[1])   # the cache holds k after rotary
    close(present_v, expected[2])
    assert present_k.shape == (batch, 2, past + new, H)


@pytest.mark.parametrize("window", [1, 3, 4])
@pytest.mark.parametrize("past", [0, 6])
def test_gqa_local_window_keeps_w_keys(window, past):
    batch, new = (2, 9) if past == 0 else (1, 4)
    inputs = gqa_inputs(batch, new, past, rotary=False)
    attrs = dict(**GQA, local_window_size=window)
    out = run_node("GroupQueryAttention", inputs, 3, "com.microsoft", **attrs)[0]
    close(out, R.group_query_attention(**inputs, **attrs)[0])
    # and not W + 1 keys (the other reading of "left window size")
    wider = R.group_query_attention(**inputs, **{**attrs, "local_window_size": window + 1})[0]
    assert np.abs(out - wider).max() > 1e-3


def test_gqa_softcap_and_scale():
    inputs = gqa_inputs(2, 7, 0, rotary=False)
    attrs = dict(**GQA, softcap=1.5, scale=0.4)
    close(run_node("GroupQueryAttention", inputs, 3, "com.microsoft", **attrs)[0],
          R.group_query_attention(**inputs, **attrs)[0])


def test_gqa_seqlens_k_is_total_length_minus_one():
    inputs = gqa_inputs(1, 3, 5, rotary=True)
    attrs = dict(**GQA, do_rotary=1)
    out = run_node("GroupQueryAttention", inputs, 3, "com.microsoft", **attrs)[0]
    close(out, R.group_query_attention(**inputs, **attrs)[0])
    # seqlens_k read as a count (T instead of T - 1) shifts the rotary positions: a different output
    shifted = R.group_query_attention(**{**inputs, "seqlens_k": inputs["seqlens_k"] + 1,
                                         "past_key": np.concatenate([inputs["past_key"]] * 2, 2),
                                         "past_value": np.concatenate([inputs["past_value"]] * 2, 2)}, **attrs)[0]
    assert np.abs(out - shifted).max() > 1e-3


# --- MultiHeadAttention, ONNX Attention --------------------------------------------------------------------

@pytest.mark.parametrize("past", [0, 4])
def test_multi_head_attention_with_past(past):
    B, S, N = 1, 3, 2
    inputs = {"query": normal(B, S, N * 8), "key": normal(B, S, N * 8), "value": normal(B, S, N * 8),
              "bias": normal(3 * N * 8), "key_padding_mask": None, "attention_bias": None,
              "past_key": normal(B, N, past, 8), "past_value": normal(B, N, past, 8)}
    out, present_k, present_v = run_node("MultiHeadAttention", inputs, 3, "com.microsoft", num_heads=N,
                                         unidirectional=1)
    expected = R.multi_head_attention(inputs["query"], inputs["key"], inputs["value"], inputs["bias"],
                                      inputs["past_key"], inputs["past_value"], num_heads=N, unidirectional=1)
    close(out, expected[0])
    close(present_k, expected[1])
    close(present_v, expected[2])


@pytest.mark.parametrize("past", [0, 4])
@pytest.mark.parametrize("causal", [0, 1])
def test_onnx_attention_23_gqa_with_past(past, causal):
    B, S = 2, 3
    inputs = {"Q": normal(B, 4, S, 8), "K": normal(B, 2, S, 8), "V": normal(B, 2, S, 8), "attn_mask": None,
              "past_key": normal(B, 2, past, 8), "past_value": normal(B, 2, past, 8)}
    out, present_k, present_v = run_node("Attention", inputs, 3, is_causal=causal, softcap=2.0)
    expected = R.onnx_attention(**inputs, is_causal=causal, softcap=2.0)
    close(out, expected[0])
    close(present_k, expected[1])
    close(present_v, expected[2])


def test_onnx_attention_23_3d_boolean_mask():
    B, S = 1, 5
    mask = RNG.random((S, S)) > 0.3
    mask[:, 0] = True
    inputs = {"Q": normal(B, S, 4 * 8), "K": normal(B, S, 2 * 8), "V": normal(B, S, 2 * 8), "attn_mask": mask}
    out = run_node("Attention", inputs, 1, q_num_heads=4, kv_num_heads=2, scale=0.3)[0]
    close(out, R.onnx_attention(**inputs, q_num_heads=4, kv_num_heads=2, scale=0.3)[0])


# --- rotary embedding: the two input orders ----------------------------------------------------------------

@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_embedding_microsoft_order(interleaved):
    x, ids = normal(2, 5, 3 * 16), RNG.integers(0, 40, (2, 5)).astype(np.int64)
    cos, sin = R.rope_caches(64, 16)
    inputs = {"input": x, "position_ids": ids, "cos_cache": cos, "sin_cache": sin}
    close(run_node("RotaryEmbedding", inputs, 1, "com.microsoft", interleaved=interleaved, num_heads=3)[0],
          R.rotary_embedding_ms(x, ids, cos, sin, interleaved, num_heads=3))


@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("rotary_dim", [0, 8])
def test_rotary_embedding_onnx_23_order(interleaved, rotary_dim):
    x, ids = normal(2, 3, 5, 16), RNG.integers(0, 40, (2, 5)).astype(np.int64)   # [B, N, S, H]
    cos, sin = R.rope_caches(64, rotary_dim or 16)
    inputs = {"X": x, "cos_cache": cos, "sin_cache": sin, "position_ids": ids}
    close(run_node("RotaryEmbedding", inputs, 1, interleaved=interleaved, rotary_embedding_dim=rotary_dim)[0],
          R.rotary_embedding_onnx(x, cos, sin, ids, interleaved, rotary_embedding_dim=rotary_dim))


def test_rotary_embedding_onnx_23_per_token_caches():
    x = normal(2, 5, 2 * 16)
    cos, sin = R.rope_caches(64, 16)
    per_token = RNG.integers(0, 40, (2, 5))
    inputs = {"X": x, "cos_cache": cos[per_token], "sin_cache": sin[per_token]}
    close(run_node("RotaryEmbedding", inputs, 1, num_heads=2)[0],
          R.rotary_embedding_onnx(x, cos[per_token], sin[per_token], None, num_heads=2))


# --- norms -------------------------------------------------------------------------------------------------

def test_rms_normalization_23():
    x, scale = normal(2, 5, 16), normal(16)
    close(run_node("RMSNormalization", {"X": x, "scale": scale}, epsilon=1e-3)[0], R.rms_norm(x, scale, 1e-3))


def test_simplified_layer_normalization_default_domain():
    x, scale = normal(2, 5, 16), normal(16)
    out = run_node("SimplifiedLayerNormalization", {"X": x, "scale": scale}, opset=17, epsilon=1e-6, axis=-1)[0]
    close(out, R.rms_norm(x, scale, 1e-6))


def test_skip_simplified_layer_normalization_outputs_norm_and_residual():
    x, skip, gamma = normal(2, 5, 16), normal(2, 5, 16), normal(16)
    out, _, _, residual = run_node("SkipSimplifiedLayerNormalization", {"input": x, "skip": skip, "gamma": gamma},
                                   4, "com.microsoft", opset=17, epsilon=1e-6)
    expected = R.skip_simplified_layer_norm(x, skip, gamma, epsilon=1e-6)
    close(out, expected[0])
    close(residual, expected[1])


# --- MatMulNBits -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits,block_size,K,symmetric", [(4, 32, 64, True), (4, 16, 64, False), (4, 128, 96, False),
                                                         (8, 32, 64, True), (8, 16, 48, False), (2, 16, 64, False)])
def test_matmul_nbits(bits, block_size, K, symmetric):
    N = 24
    A, W, bias = normal(2, 3, K), normal(K, N), normal(N)
    B, scales, zero_points = R.quantize_blockwise(W, bits, block_size, symmetric)
    inputs = {"A": A, "B": B, "scales": scales, "zero_points": zero_points, "g_idx": None, "bias": bias}
    consts = {n: v for n, v in inputs.items() if n != "A" and v is not None}
    out = run_node("MatMulNBits", inputs, 1, "com.microsoft", constants=consts, K=K, N=N, bits=bits,
                   block_size=block_size, accuracy_level=1)[0]
    expected = R.matmul_nbits(A, B, scales, zero_points, bias, K=K, N=N, bits=bits, block_size=block_size)
    close(out, expected, 1e-4)
    # the dequantised weight is the float weight up to the quantisation step
    W_hat = R.matmul_nbits_weight(B, scales, zero_points, K=K, N=N, bits=bits, block_size=block_size)
    assert np.abs(W_hat - W).max() <= scales.max() * (1.0 if symmetric else 0.5) + 1e-6


def test_matmul_nbits_float_zero_points_and_flat_scales():
    K, N, block = 64, 16, 32
    A, W = normal(4, K), normal(K, N)
    B, scales, _ = R.quantize_blockwise(W, 4, block, True)
    zp = RNG.uniform(6, 10, size=scales.shape).astype(np.float32)
    inputs = {"A": A, "B": B, "scales": scales.reshape(-1), "zero_points": zp}
    out = run_node("MatMulNBits", inputs, 1, "com.microsoft", constants={"B": B, "scales": scales.reshape(-1),
                                                                         "zero_points": zp},
                   K=K, N=N, bits=4, block_size=block, accuracy_level=1)[0]
    close(out, R.matmul_nbits(A, B, scales, zp, K=K, N=N, bits=4, block_size=block), 1e-4)


def test_matmul_nbits_accuracy_level_4_quantises_the_activation():
    """accuracy_level 4 (the builder's CPU default) quantises A to int8 per block inside the kernel: the output
    is not A @ W_hat to 1e-5 but within the int8 step of A (|A|max / 127 per block)."""
    K, N, block = 64, 32, 32
    A, W = normal(3, K), normal(K, N)
    B, scales, _ = R.quantize_blockwise(W, 4, block, True)
    consts = {"B": B, "scales": scales}
    exact = R.matmul_nbits(A, B, scales, K=K, N=N, bits=4, block_size=block)
    out = run_node("MatMulNBits", {"A": A, **consts}, 1, "com.microsoft", constants=consts, K=K, N=N, bits=4,
                   block_size=block, accuracy_level=4)[0]
    W_hat = R.matmul_nbits_weight(B, scales, None, K=K, N=N, bits=4, block_size=block)
    bound = (np.abs(A).max() / 127) * np.abs(W_hat).sum(0).max()
    assert np.abs(out - exact).max() <= bound


# --- GatherBlockQuantized, DequantizeLinear ----------------------------------------------------------------

@pytest.mark.parametrize("bits,with_zero_points", [(4, False), (4, True), (8, False), (8, True)])
def test_gather_block_quantized_uint8(bits, with_zero_points):
    rows, cols, block = 10, 64, 32
    q = RNG.integers(0, 2 ** bits, (rows, cols)).astype(np.uint8)
    data = R.pack_bits(q, bits)
    scales = RNG.uniform(0.01, 0.1, (rows, cols // block)).astype(np.float32)
    zp = R.pack_bits(RNG.integers(0, 2 ** bits, (rows, cols // block)).astype(np.uint8), bits) \
        if with_zero_points else None
    ids = np.array([[3, 0, 9], [9, 1, 1]], np.int64)
    inputs = {"data": data, "indices": ids, "scales": scales, "zero_points": zp}
    consts = {n: v for n, v in inputs.items() if n != "indices" and v is not None}
    out = run_node("GatherBlockQuantized", inputs, 1, "com.microsoft", constants=consts, bits=bits,
                   block_size=block, gather_axis=0, quantize_axis=1)[0]
    close(out, R.gather_block_quantized(data, ids, scales, zp, bits=bits, block_size=block))


def test_gather_block_quantized_int4_typed_defaults_to_zero_point_0():
    rows, cols, block = 6, 32, 16
    q = RNG.integers(-8, 8, (rows, cols)).astype(np.int8)
    data = helper.make_tensor("data", TensorProto.INT4, q.shape, q.flatten().tolist())
    scales = RNG.uniform(0.01, 0.1, (rows, cols // block)).astype(np.float32)
    ids = np.array([[5, 2]], np.int64)
    out = run_node("GatherBlockQuantized", {"data": q, "indices": ids, "scales": scales}, 1, "com.microsoft",
                   constants={"data": data, "scales": scales}, bits=4, block_size=block, gather_axis=0,
                   quantize_axis=1)[0]
    close(out, R.gather_block_quantized(q, ids, scales, None, bits=4, block_size=block, packed=False))


def test_gather_block_quantized_uint4_typed_with_zero_points():
    """The genai builder's layout (op_types_to_quantize=MatMul/Gather, is_symmetric=false): uint4 data and
    zero points, one scale per block of the embedding row."""
    rows, cols, block = 6, 32, 16
    q = RNG.integers(0, 16, (rows, cols)).astype(np.uint8)
    zp = RNG.integers(0, 16, (rows, cols // block)).astype(np.uint8)
    data = helper.make_tensor("data", TensorProto.UINT4, q.shape, q.flatten().tolist())
    zero_points = helper.make_tensor("zero_points", TensorProto.UINT4, zp.shape, zp.flatten().tolist())
    scales = RNG.uniform(0.01, 0.1, (rows, cols // block)).astype(np.float32)
    ids = np.array([[5, 2, 0]], np.int64)
    out = run_node("GatherBlockQuantized", {"data": q, "indices": ids, "scales": scales, "zero_points": zp}, 1,
                   "com.microsoft", constants={"data": data, "scales": scales, "zero_points": zero_points}, bits=4,
                   block_size=block, gather_axis=0, quantize_axis=1)[0]
    close(out, R.gather_block_quantized(q, ids, scales, zp, bits=4, block_size=block, packed=False))


@pytest.mark.parametrize("kind", ["tensor", "axis", "block"])
def test_dequantize_linear_of_a_constant(kind):
    x = RNG.integers(-128, 128, (8, 32)).astype(np.int8)
    if kind == "tensor":
        scale, zp, attrs = np.float32(0.05), np.int8(3), {}
    elif kind == "axis":
        scale, zp, attrs = RNG.uniform(0.01, 0.1, 32).astype(np.float32), RNG.integers(-5, 5, 32).astype(
            np.int8), {"axis": 1}
    else:
        scale, zp, attrs = RNG.uniform(0.01, 0.1, (8, 4)).astype(np.float32), RNG.integers(-5, 5, (8, 4)).astype(
            np.int8), {"axis": 1, "block_size": 8}
    scale, zp = np.asarray(scale), np.asarray(zp)
    inputs = {"x": x, "x_scale": scale, "x_zero_point": zp}
    out = run_node("DequantizeLinear", inputs, 1, opset=21, constants=inputs, **attrs)[0]
    close(out, R.dequantize_linear(x, scale, zp, attrs.get("axis", 1), attrs.get("block_size", 0)))


# --- integer matmuls and dynamic quantisation --------------------------------------------------------------

def test_dynamic_quantize_linear():
    x = normal(3, 20) * 3
    y, scale, zp = run_node("DynamicQuantizeLinear", {"x": x}, 3, opset=17)
    ry, rscale, rzp = R.dynamic_quantize_linear(x)
    close(scale, rscale)
    assert zp == rzp
    assert np.abs(y.astype(int) - ry.astype(int)).max() <= 1   # ties of x / scale may round either way


def test_matmul_integer_and_qlinear_matmul_with_a_constant_weight():
    a = RNG.integers(0, 256, (4, 16)).astype(np.uint8)
    b = RNG.integers(-128, 128, (16, 8)).astype(np.int8)
    a_zp, b_zp = np.array(120, np.uint8), RNG.integers(-3, 3, 8).astype(np.int8)
    out = run_node("MatMulInteger", {"A": a, "B": b, "a_zero_point": a_zp, "b_zero_point": b_zp}, opset=17,
                   constants={"B": b, "b_zero_point": b_zp})[0]
    np.testing.assert_array_equal(out, R.matmul_integer(a, b, a_zp, b_zp))
    a_scale, b_scale = np.array(0.02, np.float32), RNG.uniform(0.01, 0.05, 8).astype(np.float32)
    y_scale, y_zp = np.array(0.5, np.float32), np.array(128, np.uint8)
    inputs = {"a": a, "a_scale": a_scale, "a_zero_point": a_zp, "b": b, "b_scale": b_scale,
              "b_zero_point": b_zp, "y_scale": y_scale, "y_zero_point": y_zp}
    out = run_node("QLinearMatMul", inputs, opset=21,
                   constants={k: v for k, v in inputs.items() if k != "a"})[0]
    expected = R.qlinear_matmul(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1   # the runtime's float rounding of ties


def test_qlinear_conv_with_a_constant_weight():
    x = RNG.integers(0, 256, (1, 2, 6, 6)).astype(np.uint8)
    w = RNG.integers(-128, 128, (3, 2, 3, 3)).astype(np.int8)
    x_scale, x_zp = np.array(0.02, np.float32), np.array(100, np.uint8)
    w_scale, w_zp = RNG.uniform(0.01, 0.03, 3).astype(np.float32), np.zeros(3, np.int8)
    y_scale, y_zp = np.array(0.3, np.float32), np.array(128, np.uint8)
    inputs = {"x": x, "x_scale": x_scale, "x_zero_point": x_zp, "w": w, "w_scale": w_scale, "w_zero_point": w_zp,
              "y_scale": y_scale, "y_zero_point": y_zp}
    out = run_node("QLinearConv", inputs, opset=17, constants={k: v for k, v in inputs.items() if k != "x"})[0]
    # the layer is the convolution of the dequantised input with the dequantised constant weight
    xf = (x.astype(np.float32) - x_zp) * x_scale
    wf = w.astype(np.float32) * w_scale[:, None, None, None]
    conv = np.zeros((1, 3, 4, 4), np.float32)
    for i in range(4):
        for j in range(4):
            conv[0, :, i, j] = np.tensordot(wf, xf[0, :, i:i + 3, j:j + 3], axes=([1, 2, 3], [0, 1, 2]))
    expected = np.clip(np.round(conv / y_scale) + 128, 0, 255)
    assert np.abs(out.astype(int) - expected).max() <= 1


def test_gqa_right_padded_prompt_reads_seqlens_k_per_entry():
    """A prompt batch of unequal lengths (genai: seqlens_k = sum(attention_mask) - 1 per entry, right padding):
    an entry's real tokens compute what they compute alone; its padded rows are not defined."""
    inputs = gqa_inputs(2, 6, 0, rotary=True)
    inputs["past_key"], inputs["past_value"] = np.zeros((2, 2, 0, H), np.float32), np.zeros((2, 2, 0, H), np.float32)
    inputs["seqlens_k"] = np.array([5, 2], np.int32)   # entry 1 has 3 tokens
    attrs = dict(**GQA, do_rotary=1)
    out = run_node("GroupQueryAttention", inputs, 3, "com.microsoft", **attrs)[0]
    alone = {**inputs, "query": inputs["query"][1:2, :3], "key": inputs["key"][1:2, :3],
             "value": inputs["value"][1:2, :3], "past_key": inputs["past_key"][1:2],
             "past_value": inputs["past_value"][1:2], "seqlens_k": np.array([2], np.int32),
             "total_sequence_length": np.array(3, np.int32)}
    close(out[1, :3], R.group_query_attention(**alone, **attrs)[0][0])
    close(out[0], R.group_query_attention(**{**inputs, "seqlens_k": np.array([5, 5], np.int32)}, **attrs)[0][0])
