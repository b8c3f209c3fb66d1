"""The fused ops of served LLM graphs (onnxruntime's GroupQueryAttention, MultiHeadAttention with a cache,
RotaryEmbedding; ONNX opset-23 Attention, RotaryEmbedding, RMSNormalization), de-fused into standard ops,
compute what onnxruntime computes: one-node models, random inputs, every output compared (tools/llm_graphs.md,
section 4, states the semantics)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxlrp import Explainer
from onnxlrp.canonical.defuse import defuse_contrib_ops
from onnxlrp.errors import OnnxLrpError

ort = pytest.importorskip("onnxruntime")
TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32,
         np.dtype(np.int64): TensorProto.INT64, np.dtype(bool): TensorProto.BOOL}
CONTRIB = "com.microsoft"


def one_node(op, inputs: dict, outputs: int = 1, domain: str = "", opset: int = 23, constants=(), **attrs):
    """A model of one node; inputs None are omitted, names in `constants` are initialisers (as the caches and
    weights of served graphs are), the others graph inputs of static shape."""
    node = helper.make_node(op, [n if v is not None else "" for n, v in inputs.items()],
                            [f"y{j}" for j in range(outputs)], domain=domain, name="fused", **attrs)
    feeds = {n: v for n, v in inputs.items() if v is not None and n not in constants}
    graph = helper.make_graph(
        [node], "one", [helper.make_tensor_value_info(n, TYPES[v.dtype], v.shape) for n, v in feeds.items()],
        [onnx.ValueInfoProto(name=f"y{j}") for j in range(outputs)],
        [numpy_helper.from_array(inputs[n], n) for n in constants])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(CONTRIB, 1)],
                              ir_version=10)
    return model, feeds


def run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def defused(model):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    out = defuse_contrib_ops(copy)
    fused = {n.op_type for n in model.graph.node}
    assert not any(n.op_type in fused or n.domain == CONTRIB for n in out.graph.node)
    return out


def check(model, feeds, defined=None, tol=1e-5):
    """The de-fused model's outputs are onnxruntime's, of the same shapes; `defined`: output index -> the index of
    its part that onnxruntime defines (it leaves a cache's unused rows uninitialised)."""
    expected, got = run(model, feeds), run(defused(model), feeds)
    assert len(got) == len(expected)
    for j, (a, b) in enumerate(zip(got, expected)):
        assert a.shape == b.shape, (j, a.shape, b.shape)
        part = (defined or {}).get(j, ...)
        np.testing.assert_allclose(a[part], b[part], rtol=tol, atol=tol, err_msg=f"output {j}")
    return expected


def held_rows(count):
    """The defined rows of a GroupQueryAttention present (batch 1): the first `count`."""
    return {1: np.s_[:, :, :count], 2: np.s_[:, :, :count]}


def normal(rng, *shape):
    return rng.normal(size=shape).astype(np.float32)


def rope_caches(positions: int, dim: int, base: float = 10000.0):
    angles = np.arange(positions)[:, None] * base ** (-np.arange(0, dim, 2) / dim)[None]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


# --- GroupQueryAttention ----------------------------------------------------------------------------------

def gqa(rng, batch, new, capacity, past_lengths, *, heads=4, kv_heads=2, head=16, packed=False, rotary_dim=16,
        first_prompt=None, **attrs):
    """A GroupQueryAttention node as onnxruntime-genai writes it: past [B, Nkv, capacity, H] (BNSH), seqlens_k =
    T_b - 1 for T_b = past_lengths[b] + new, total_sequence_length = max T_b, cos/sin caches as initialisers."""
    q, k, v = (normal(rng, batch, new, n * head) for n in (heads, kv_heads, kv_heads))
    totals = np.asarray(past_lengths) + new
    cos, sin = rope_caches(64, rotary_dim)
    inputs = {"query": np.concatenate([q, k, v], -1) if packed else q, "key": None if packed else k,
              "value": None if packed else v, "past_key": normal(rng, batch, kv_heads, capacity, head),
              "past_value": normal(rng, batch, kv_heads, capacity, head),
              "seqlens_k": (totals - 1).astype(np.int32),
              "total_sequence_length": np.array(first_prompt or totals.max(), np.int32),
              "cos_cache": cos if attrs.get("do_rotary") else None, "sin_cache": sin if attrs.get("do_rotary") else None}
    return one_node("GroupQueryAttention", inputs, 3, CONTRIB, constants=("cos_cache", "sin_cache")
                    if attrs.get("do_rotary") else (), num_heads=heads, kv_num_heads=kv_heads, **attrs)


@pytest.mark.parametrize("past", [0, 5])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("rotary", ["none", "half", "interleaved"])
def test_gqa_packed_or_separate_rotary_and_past(past, packed, rotary):
    rng = np.random.default_rng(past + 2 * packed)
    batch, new = (2, 6) if past == 0 else (1, 3)   # with a past, S > 1 needs batch 1 (the op's rule)
    rotary_attrs = {} if rotary == "none" else {"do_rotary": 1, "rotary_interleaved": int(rotary == "interleaved")}
    check(*gqa(rng, batch, new, past, [past] * batch, packed=packed, **rotary_attrs))


@pytest.mark.parametrize("window", [1, 3, 4])
@pytest.mark.parametrize("past", [0, 6])
def test_gqa_local_window(window, past):
    rng = np.random.default_rng(window)
    batch, new = (2, 9) if past == 0 else (1, 4)
    check(*gqa(rng, batch, new, past, [past] * batch, local_window_size=window, do_rotary=1))


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 1), (6, 2)])
def test_gqa_softcap_scale_and_head_groups(heads, kv_heads):
    rng = np.random.default_rng(heads + kv_heads)
    check(*gqa(rng, 1, 5, 3, [3], heads=heads, kv_heads=kv_heads, softcap=1.5, scale=0.4, do_rotary=1))


def test_gqa_default_scale_of_a_wider_head_and_partial_rotary():
    """head 32 with caches of width 8: rotary on the first 16 dims only (the scale 1/sqrt(32))."""
    rng = np.random.default_rng(7)
    check(*gqa(rng, 1, 3, 4, [4], head=32, rotary_dim=16, do_rotary=1))


@pytest.mark.parametrize("past", [0, 2, 7])
@pytest.mark.parametrize("new", [1, 3, 6])
def test_gqa_sliding_window_cache(past, new):
    """Gemma3's sliding layer as genai builds it: a window-sized past buffer (capacity 4 = the window) holding the
    most recent min(P, 4) positions from row 0, all zeros and unused for a prompt (P = seqlens_k + 1 - S = 0);
    the present holds the last min(T, 4) positions."""
    rng = np.random.default_rng(past * 10 + new)
    model, feeds = gqa(rng, 1, new, 4, [past], local_window_size=4, sliding_window_cache=1, do_rotary=1)
    if past == 0:
        feeds["past_key"], feeds["past_value"] = (np.zeros_like(feeds["past_key"]),) * 2
    elif past < 4:   # rows past P are unused: their content must not matter
        feeds["past_key"][:, :, past:] = 1e3
    check(model, feeds, held_rows(min(past + new, 4)))


def test_gqa_past_buffer_longer_than_the_past():
    """A buffer of capacity 8 holding 3 positions (a shared past/present buffer): rows 3.. are unused; the
    present is the buffer with the new rows written after the held ones."""
    rng = np.random.default_rng(3)
    model, feeds = gqa(rng, 1, 2, 8, [3], do_rotary=1)
    feeds["past_value"][:, :, 3:] = 1e3
    check(model, feeds, held_rows(3 + 2))


def test_gqa_decoding_a_batch_of_different_lengths():
    """One new token per entry, entry 0 with a past of 6, entry 1 of 3 in a buffer of 6."""
    rng = np.random.default_rng(4)
    model, feeds = gqa(rng, 2, 1, 6, [6, 3], do_rotary=1, rotary_interleaved=1)
    check(model, feeds, {1: np.s_[1, :, :4], 2: np.s_[1, :, :4]})   # entry 0 fills all 7 rows
    check(model, feeds, {1: np.s_[0], 2: np.s_[0]})


def test_gqa_right_padded_prompt():
    """A prompt batch of unequal lengths (genai: seqlens_k = sum(attention_mask) - 1 per entry): positions from
    0 for every entry (S = total_sequence_length), each entry's own keys; the padded rows are not defined."""
    rng = np.random.default_rng(5)
    model, feeds = gqa(rng, 2, 6, 0, [0, 0], do_rotary=1, first_prompt=6)
    feeds["seqlens_k"] = np.array([5, 2], np.int32)
    expected, got = run(model, feeds), run(defused(model), feeds)
    np.testing.assert_allclose(got[0][0], expected[0][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[0][1, :3], expected[0][1, :3], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-5, atol=1e-5)


def test_gqa_bidirectional():
    rng = np.random.default_rng(6)
    check(*gqa(rng, 2, 4, 0, [0, 0], causal=0))


def test_gqa_without_past_inputs():
    rng = np.random.default_rng(8)
    model, feeds = gqa(rng, 1, 5, 0, [0], do_rotary=1)
    for name in ("past_key", "past_value"):
        model.graph.node[0].input[list(model.graph.node[0].input).index(name)] = ""
        model.graph.input.remove(next(i for i in model.graph.input if i.name == name))
        del feeds[name]
    check(model, feeds)


# --- MultiHeadAttention with a cache, ONNX Attention -------------------------------------------------------

@pytest.mark.parametrize("past", [0, 4])
@pytest.mark.parametrize("unidirectional", [0, 1])
def test_multi_head_attention_with_past(past, unidirectional):
    rng = np.random.default_rng(past + unidirectional)
    B, S, N, H = 2, 3, 2, 8
    inputs = {"query": normal(rng, B, S, N * H), "key": normal(rng, B, S, N * H), "value": normal(rng, B, S, N * H),
              "bias": normal(rng, 3 * N * H), "key_padding_mask": None, "attention_bias": None,
              "past_key": normal(rng, B, N, past, H), "past_value": normal(rng, B, N, past, H)}
    check(*one_node("MultiHeadAttention", inputs, 3, CONTRIB, opset=17, constants=("bias",), num_heads=N,
                    unidirectional=unidirectional))


def test_multi_head_attention_with_past_and_a_key_padding_mask():
    rng = np.random.default_rng(9)
    B, S, P, N, H = 2, 2, 3, 2, 8
    mask = np.ones((B, P + S), np.int32)
    mask[1, :2] = 0
    inputs = {"query": normal(rng, B, S, N * H), "key": normal(rng, B, S, N * H), "value": normal(rng, B, S, N * H),
              "bias": None, "key_padding_mask": mask, "attention_bias": None,
              "past_key": normal(rng, B, N, P, H), "past_value": normal(rng, B, N, P, H)}
    check(*one_node("MultiHeadAttention", inputs, 3, CONTRIB, opset=17, num_heads=N, scale=0.3))


@pytest.mark.parametrize("past", [0, 4])
@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("softcap", [0.0, 2.0])
def test_onnx_attention_gqa_with_past(past, causal, softcap):
    rng = np.random.default_rng(past + causal)
    B, S = 2, 3
    inputs = {"Q": normal(rng, B, 4, S, 8), "K": normal(rng, B, 2, S, 8), "V": normal(rng, B, 2, S, 8),
              "attn_mask": None, "past_key": normal(rng, B, 2, past, 8), "past_value": normal(rng, B, 2, past, 8)}
    check(*one_node("Attention", inputs, 3, is_causal=causal, softcap=softcap))


@pytest.mark.parametrize("mask", ["bool", "float"])
@pytest.mark.parametrize("causal", [0, 1])
def test_onnx_attention_3d_with_a_mask(mask, causal):
    rng = np.random.default_rng(11)
    B, S, P = 1, 5, 2
    keep = rng.random((S, P + S)) > 0.3
    keep[:, 0] = True
    attn_mask = keep if mask == "bool" else np.where(keep, normal(rng, S, P + S), -np.inf).astype(np.float32)
    inputs = {"Q": normal(rng, B, S, 4 * 8), "K": normal(rng, B, S, 2 * 8), "V": normal(rng, B, S, 2 * 8),
              "attn_mask": attn_mask, "past_key": normal(rng, B, 2, P, 8), "past_value": normal(rng, B, 2, P, 8)}
    check(*one_node("Attention", inputs, 3, q_num_heads=4, kv_num_heads=2, scale=0.3, is_causal=causal))


def test_onnx_attention_as_torch_exports_it():
    """dynamo at opset 23: 4-D, key/value heads already repeated, a float mask of 0 / float32 min, scale given."""
    rng = np.random.default_rng(12)
    B, S = 2, 6
    allowed = np.tril(np.ones((S, S), bool))
    mask = np.where(allowed, 0.0, np.finfo(np.float32).min).astype(np.float32)[None, None].repeat(B, 0)
    inputs = {"Q": normal(rng, B, 4, S, 16), "K": normal(rng, B, 4, S, 16), "V": normal(rng, B, 4, S, 16),
              "attn_mask": mask}
    check(*one_node("Attention", inputs, 1, scale=0.25))


# --- rotary embeddings: the two input orders ---------------------------------------------------------------

@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("layout", ["3d", "4d", "3d_no_heads", "start_offset", "partial"])
def test_rotary_embedding_microsoft(interleaved, layout):
    rng = np.random.default_rng(interleaved)
    H, N, B, S = 16, 3, 2, 5
    cos, sin = rope_caches(64, 8 if layout == "partial" else H)
    x = normal(rng, B, N, S, H) if layout == "4d" else normal(rng, B, S, N * H if layout != "3d_no_heads" else H)
    ids = rng.integers(0, 40, (B, S)).astype(np.int64) if layout != "start_offset" else np.array([7], np.int64)
    attrs = {"num_heads": N} if layout in ("3d", "start_offset", "partial") else {}
    if layout == "partial":
        attrs["rotary_embedding_dim"] = 8
    if layout == "start_offset":
        x = x[:1]
    inputs = {"input": x, "position_ids": ids, "cos_cache": cos, "sin_cache": sin}
    check(*one_node("RotaryEmbedding", inputs, 1, CONTRIB, opset=17, constants=("cos_cache", "sin_cache"),
                    interleaved=interleaved, **attrs))


@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("rotary_dim", [0, 8])
def test_rotary_embedding_onnx_23_with_positions(interleaved, rotary_dim):
    rng = np.random.default_rng(rotary_dim)
    x, ids = normal(rng, 2, 3, 5, 16), rng.integers(0, 40, (2, 5)).astype(np.int64)   # [B, N, S, H]
    cos, sin = rope_caches(64, rotary_dim or 16)
    inputs = {"X": x, "cos_cache": cos, "sin_cache": sin, "position_ids": ids}
    check(*one_node("RotaryEmbedding", inputs, 1, constants=("cos_cache", "sin_cache"), interleaved=interleaved,
                    rotary_embedding_dim=rotary_dim))


@pytest.mark.parametrize("layout", ["3d", "4d"])
def test_rotary_embedding_onnx_23_per_token_caches(layout):
    """What torch.onnx's dynamo export writes: caches already gathered per token [B, S, d/2], computed tensors."""
    rng = np.random.default_rng(13)
    cos, sin = rope_caches(64, 16)
    per_token = rng.integers(0, 40, (2, 5))
    x = normal(rng, 2, 5, 2 * 16) if layout == "3d" else normal(rng, 2, 2, 5, 16)
    inputs = {"X": x, "cos_cache": cos[per_token], "sin_cache": sin[per_token]}
    check(*one_node("RotaryEmbedding", inputs, 1, **({"num_heads": 2} if layout == "3d" else {})))


# --- norms -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [-1, -2, 2])
def test_rms_normalization(axis):
    rng = np.random.default_rng(14)
    x = normal(rng, 2, 3, 5, 16)
    scale = normal(rng, *x.shape[axis:])
    model, feeds = one_node("RMSNormalization", {"X": x, "scale": scale}, 1, constants=("scale",), epsilon=1e-3,
                            axis=axis)
    check(model, feeds)
    ops = [n.op_type for n in defused(model).graph.node]
    assert ops == ["Pow", "ReduceMean", "Add", "Sqrt", "Div", "Mul"]   # the chain whose sigma is held constant


def test_skip_simplified_layer_norm_gives_the_residual_sum():
    rng = np.random.default_rng(15)
    x, skip, gamma = normal(rng, 2, 5, 16), normal(rng, 2, 5, 16), normal(rng, 16)
    model, feeds = one_node("SkipSimplifiedLayerNormalization", {"input": x, "skip": skip, "gamma": gamma}, 4,
                            CONTRIB, opset=17, constants=("gamma",), epsilon=1e-6)
    model.graph.node[0].output[1] = model.graph.node[0].output[2] = ""   # unused, as genai writes it
    del model.graph.output[1:3]
    check(model, feeds)


# --- what is refused ---------------------------------------------------------------------------------------

def test_a_gqa_with_inputs_it_cannot_take_is_refused_in_one_line():
    rng = np.random.default_rng(16)
    model, _ = gqa(rng, 1, 3, 2, [2], do_rotary=1)
    model.graph.node[0].input.extend(["position_ids"])
    model.graph.input.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, 3]))
    with pytest.raises(OnnxLrpError, match=r"GroupQueryAttention \(node 'fused'\): GroupQueryAttention with "
                                           r"position_ids cannot be de-fused") as refused:
        Explainer(model, composite="attn_lrp").compiled()
    assert "\n" not in str(refused.value)


def test_an_attention_op_left_fused_is_refused_without_suggesting_to_declare_it():
    """Declaring an attention op Pass or linear in its first input would be wrong: the refusal says to export the
    model without it instead (onnxruntime's decoding-only DecoderMaskedMultiHeadAttention here)."""
    rng = np.random.default_rng(17)
    inputs = {"query": normal(rng, 1, 1, 16), "key": normal(rng, 1, 1, 16), "value": normal(rng, 1, 1, 16)}
    model, _ = one_node("DecoderMaskedMultiHeadAttention", inputs, 1, CONTRIB, opset=17, num_heads=2)
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y0", TensorProto.FLOAT, [1, 1, 16]))
    with pytest.raises(OnnxLrpError) as refused:
        Explainer(model, composite="attn_lrp").compiled()
    message = str(refused.value)
    assert "DecoderMaskedMultiHeadAttention" in message and "'fused'" in message and "\n" not in message
    assert "declare" not in message and "rules.Pass" not in message and "export" in message
