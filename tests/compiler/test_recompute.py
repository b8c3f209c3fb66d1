"""The bounded-memory explainer (memory="low", onnxlrp/compiler/recompute.py): the same relevance as the default
form, the forward keeps only checkpoints, and onnxruntime runs the recomputed copies in the relevance pass."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest

from onnxlrp import Explainer
from onnxlrp.compiler import compile_explainer
from onnxlrp.compiler.recompute import RECOMPUTED

ort = pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[2]

# two residual blocks, each x + W2 relu(W1 x)
RESIDUAL = """
<ir_version: 9, opset_import: ["" : 17]>
residual (float[N, 4] x) => (float[N, 3] logits)
<float[4, 6] w1 = {0.3, -0.2, 0.5, 0.1, -0.4, 0.2, 0.6, 0.3, -0.1, 0.2, 0.4, -0.5, -0.3, 0.1, 0.2, 0.5, -0.2, 0.3,
 0.1, 0.4, -0.6, 0.2, 0.3, 0.1},
 float[6, 4] w2 = {0.2, -0.1, 0.3, 0.4, -0.2, 0.5, 0.1, -0.3, 0.3, 0.2, -0.4, 0.1, 0.1, 0.3, 0.2, -0.2, -0.5, 0.1,
 0.4, 0.3, 0.2, -0.1, 0.3, 0.2},
 float[4, 3] w3 = {0.5, -0.3, 0.2, 0.1, 0.4, -0.2, -0.3, 0.2, 0.6, 0.2, 0.1, -0.4}>
{
    h1 = MatMul(x, w1)
    a1 = Relu(h1)
    d1 = MatMul(a1, w2)
    r1 = Add(x, d1)
    h2 = MatMul(r1, w1)
    a2 = Relu(h2)
    d2 = MatMul(a2, w2)
    r2 = Add(r1, d2)
    logits = MatMul(r2, w3)
}
"""


def _relevances(model, composite, x, memory):
    return Explainer(model, composite=composite, memory=memory).explain(x, target=np.zeros(len(x), np.int64))


@pytest.mark.parametrize("composite", ["epsilon", "attn_lrp"])
def test_the_low_memory_form_explains_as_the_default_form(composite):
    model = onnx.parser.parse_model(RESIDUAL)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    default, low = (_relevances(model, composite, x, memory) for memory in ("default", "low"))
    np.testing.assert_allclose(low.relevance, default.relevance, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(low.outputs[0], default.outputs[0])


def _forward_reads(compiled) -> tuple[set[str], set[str]]:
    """The forward tensors relevance nodes read, and the forward tensors of the explainer."""
    nodes = compiled.model.graph.node
    forward = {o for n in nodes if not n.name.startswith("lrp/") and not n.name.endswith(RECOMPUTED) for o in n.output}
    read = {i for n in nodes if n.name.startswith("lrp/") for i in n.input if i in forward}
    return read, forward


def test_relevance_nodes_read_only_checkpoints():
    """Of the forward, the relevance pass reads only the input, the residual joins' outputs and the logits; the
    ReLUs and products it needs are recomputed."""
    model = onnx.parser.parse_model(RESIDUAL)
    default = compile_explainer(model, composite="epsilon")
    low = compile_explainer(model, composite="epsilon", memory="low")
    assert {"a1", "a2", "h1", "h2"} & _forward_reads(default)[0]
    assert _forward_reads(low)[0] <= {"x", "r1", "r2", "logits"}
    assert any(n.name.endswith(RECOMPUTED) for n in low.model.graph.node)
    assert json.loads(next(p.value for p in low.model.metadata_props if p.key == "onnxlrp"))["memory"] == "low"


# a block with a join of its own (as the rotary embedding's q * cos + rotate(q) * sin), the stream through a Cast
INNER_JOIN = """
<ir_version: 9, opset_import: ["" : 17]>
inner_join (float[N, 4] x) => (float[N, 3] logits)
<float[4, 4] w1 = {0.3, -0.2, 0.5, 0.1, -0.4, 0.2, 0.6, 0.3, -0.1, 0.2, 0.4, -0.5, -0.3, 0.1, 0.2, 0.5},
 float[4, 4] w2 = {0.2, -0.1, 0.3, 0.4, -0.2, 0.5, 0.1, -0.3, 0.3, 0.2, -0.4, 0.1, 0.1, 0.3, 0.2, -0.2},
 float[4, 3] w3 = {0.5, -0.3, 0.2, 0.1, 0.4, -0.2, -0.3, 0.2, 0.6, 0.2, 0.1, -0.4}>
{
    stream = Cast <to = 1> (x)
    a = MatMul(stream, w1)
    b = MatMul(stream, w2)
    inner = Add(a, b)
    branch = Relu(inner)
    residual = Add(stream, branch)
    logits = MatMul(residual, w3)
}
"""


# the stream begins at a weighted layer (a ViT's patch embedding), not at the input
EMBEDDED = RESIDUAL.replace("residual (float[N, 4] x)", "embedded (float[N, 4] x)").replace(
    "<float[4, 6] w1", "<float[4, 4] we = {0.5, 0.1, -0.2, 0.3, 0.2, 0.4, 0.1, -0.3, -0.1, 0.2, 0.6, 0.1, 0.3, -0.2, "
    "0.1, 0.4},\n float[4, 6] w1").replace("    h1 = MatMul(x, w1)", "    e = MatMul(x, we)\n    h1 = MatMul(e, w1)").replace(
    "r1 = Add(x, d1)", "r1 = Add(e, d1)")


def test_the_residual_joins_are_checkpoints_where_the_stream_begins_at_a_layer():
    """Both joins are kept: the first because the second reads it, the second because no join comes after."""
    low = compile_explainer(onnx.parser.parse_model(EMBEDDED), composite="epsilon", memory="low")
    assert {"r1", "r2"} <= _forward_reads(low)[0]


def test_only_the_residual_joins_are_checkpoints():
    """A join inside a block is recomputed with it (Qwen2.5-0.5B shape at 2048 tokens: 874 -> 651 MB, the rotary
    sums no longer kept); the join that adds the block to the stream, read through a Cast, is kept."""
    low = compile_explainer(onnx.parser.parse_model(INNER_JOIN), composite="epsilon", memory="low")
    read, _ = _forward_reads(low)
    assert "residual" in read and "inner" not in read
    assert any(n.name.endswith(RECOMPUTED) and n.output[0] == "inner" + RECOMPUTED for n in low.model.graph.node)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    default = _relevances(onnx.parser.parse_model(INNER_JOIN), "epsilon", x, "default")
    np.testing.assert_allclose(_relevances(onnx.parser.parse_model(INNER_JOIN), "epsilon", x, "low").relevance,
                               default.relevance, rtol=1e-6, atol=1e-7)


def test_onnxruntime_runs_the_copies_after_the_forward(tmp_path):
    """Each copy depends on the signal that needs it, so onnxruntime (default order, all optimisations, which
    would merge an independent copy into the node it copies) runs every one after the forward is done."""
    decoder = pytest.importorskip("tests.decoder_model")
    compiled = compile_explainer(decoder.decoder("plain"), composite="attn_lrp", memory="low")
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    session = ort.InferenceSession(compiled.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ids = np.array([[1, 3, 4, 5, 6, 3, 7]], np.int64)
    session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids), compiled.target_input: np.array([-1]),
                       compiled.position_input: np.array([6])})
    events = json.loads(Path(session.end_profiling()).read_text())
    order = [e["name"][:-len("_kernel_time")] for e in events
             if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    forward_names = {n.name for n in compiled.model.graph.node if not n.name.startswith("lrp/")
                     and not n.name.endswith(RECOMPUTED) and "/after/" not in n.name}
    copies = [k for k, name in enumerate(order) if name.endswith(RECOMPUTED)]
    forward = [k for k, name in enumerate(order) if name in forward_names]
    assert copies and min(copies) > max(forward)


@pytest.mark.parametrize("model, composite", [("decoder", "attn_lrp"), ("vit", "attn_lrp"), ("vit", "cp_lrp")])
def test_transformers_are_explained_alike_in_both_forms(model, composite):
    if model == "decoder":
        decoder = pytest.importorskip("tests.decoder_model")
        ids = np.array([[1, 3, 4, 5, 6, 3, 7, 8, 9]], np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        explain = lambda ex: ex.explain(feeds).relevances["input_ids"]   # noqa: E731
        source = decoder.decoder("plain")
    else:
        source = str(ROOT / "models" / "demo" / "digits_vit.onnx")
        x = np.random.default_rng(1).uniform(size=(2, 1, 32, 32)).astype(np.float32)
        explain = lambda ex: ex.explain(x).relevance   # noqa: E731
    default, low = (explain(Explainer(source, composite=composite, memory=memory)) for memory in ("default", "low"))
    np.testing.assert_allclose(low, default, rtol=1e-5, atol=1e-6 * np.abs(default).max())


def _values(rng, *shape) -> str:
    return ", ".join(f"{v:.3f}" for v in rng.normal(size=shape).ravel() * 0.5)


_RNG = np.random.default_rng(0)
# an RMSNorm as torch.onnx writes it (x * 1 / sqrt(mean(x^2) + eps), then the scale) before a residual block
RMS_NORM = f"""
<ir_version: 9, opset_import: ["" : 17]>
rmsnorm (float[N, 5, 8] x) => (float[N, 3] logits)
<float two = {{2.0}}, float eps = {{1e-6}}, float one = {{1.0}}, float[8] g = {{{_values(_RNG, 8)}}},
 float[8, 8] w1 = {{{_values(_RNG, 8, 8)}}}, float[8, 3] w2 = {{{_values(_RNG, 8, 3)}}}>
{{
    square = Pow(x, two)
    mean = ReduceMean <axes = [-1]> (square)
    shifted = Add(mean, eps)
    rms = Sqrt(shifted)
    inverse = Div(one, rms)
    normalised = Mul(x, inverse)
    y = Mul(g, normalised)
    h = MatMul(y, w1)
    r = Add(x, h)
    pooled = ReduceMean <axes = [1], keepdims = 0> (r)
    logits = MatMul(pooled, w2)
}}
"""


@pytest.mark.parametrize("memory", ["default", "low"])
def test_a_norm_is_fused_in_the_forward_as_in_inference(memory, tmp_path):
    """The relevance pass recomputes a decomposed norm's statistics (both forms), so onnxruntime fuses the norm
    in the explainer's forward as it does in inference: the same logits bit for bit, and the same relevance in
    both forms. Reading the forward's 1 / rms stopped the fusion in the default form (logits 6e-8 apart)."""
    forward = _fused_as_inference(onnx.parser.parse_model(RMS_NORM), memory, tmp_path)
    assert "SimplifiedLayerNormalization" in forward and "Sqrt" not in forward


def _fused_as_inference(model: onnx.ModelProto, memory: str, tmp_path) -> list[str]:
    """The op types of the explainer's forward as onnxruntime optimises it, after checking that the explainer
    computes the model's logits bit for bit and the same relevance in both forms."""
    compiled = compile_explainer(model, composite="attn_lrp", memory=memory)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(compiled.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).normal(size=(2, 5, 8)).astype(np.float32)
    inference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    result = _relevances(model, "attn_lrp", x, memory)
    np.testing.assert_array_equal(result.outputs[0], inference.run(None, {"x": x})[0])
    other = _relevances(model, "attn_lrp", x, "low" if memory == "default" else "default")
    np.testing.assert_array_equal(result.relevance, other.relevance)
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node
            if not n.name.startswith("lrp/") and not n.name.endswith(RECOMPUTED) and "/after/" not in n.name]


# a dense layer with its bias, torch's decomposed erf GELU, a second dense layer: x * (1 + erf(x / sqrt 2)) * 0.5
ERF_GELU = """
<ir_version: 9, opset_import: ["" : 17]>
erf_gelu (float[N, 5, 8] x) => (float[N, 5, 3] logits)
<float[8, 16] w1 = {%s}, float[16] b1 = {%s}, float[16, 3] w2 = {%s},
 float sqrt2 = {1.4142135}, float one = {1.0}, float half = {0.5}>
{
    h = MatMul(x, w1)
    hb = Add(h, b1)
    scaled = Div(hb, sqrt2)
    e = Erf(scaled)
    e1 = Add(e, one)
    m = Mul(hb, e1)
    g = Mul(m, half)
    logits = MatMul(g, w2)
}
""" % tuple(", ".join(f"{v:.4f}" for v in np.random.default_rng(seed).normal(scale=0.5, size=size))
            for seed, size in ((3, 128), (4, 16), (5, 48)))


@pytest.mark.parametrize("memory", ["default", "low"])
def test_an_erf_gelu_is_fused_in_the_forward_as_in_inference(memory, tmp_path):
    """The relevance pass recomputes the insides of a decomposed GELU (both forms), so onnxruntime fuses it in the
    explainer's forward (into its Gelu kernel, which rounds differently from Erf) as it does in inference: the
    same logits bit for bit, and the same relevance in both forms. The identity rule's read of x (1 + erf)
    stopped the fusion in the default form (3.4e-5 between the forms on a ViT-L/16)."""
    forward = _fused_as_inference(onnx.parser.parse_model(ERF_GELU), memory, tmp_path)
    assert {"Gelu", "BiasGelu"} & set(forward) and "Erf" not in forward


POOL_AND_NORM = """
<ir_version: 9, opset_import: ["" : 17]>
pool_and_norm (float[N, 1, 4, 4] x) => (float[N, 3] logits)
<float[2, 1, 3, 3] w = {0.3, -0.2, 0.5, 0.1, -0.4, 0.2, 0.6, 0.3, -0.1, 0.2, 0.4, -0.5, -0.3, 0.1, 0.2, 0.5, -0.2,
 0.3}, float[8] scale = {1.0, 0.9, 1.1, 1.2, 0.8, 1.0, 0.7, 1.3}, float[8] shift = {0.1, 0.0, -0.1, 0.2, 0.0, 0.1,
 -0.2, 0.0}, float[8, 3] w2 = {0.5, -0.3, 0.2, 0.1, 0.4, -0.2, -0.3, 0.2, 0.6, 0.2, 0.1, -0.4, 0.3, -0.1, 0.2, 0.5,
 0.1, -0.2, -0.4, 0.3, 0.1, 0.2, -0.5, 0.4}>
{
    c = Conv <pads = [1, 1, 1, 1]> (x, w)
    a = Relu(c)
    p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (a)
    f = Flatten(p)
    n = LayerNormalization <axis = -1> (f, scale, shift)
    logits = MatMul(n, w2)
}
"""


def test_the_default_form_recomputes_nothing_it_can_keep():
    """Outputs the walk asks of forward nodes (MaxPool's indices, LayerNormalization's 1 / sigma) are kept, as
    every forward tensor but a decomposed norm's statistics is: no copy of a forward node in the default form
    (the MaxPool and the LayerNormalization were copied, run twice, by the first version of that rule)."""
    compiled = compile_explainer(onnx.parser.parse_model(POOL_AND_NORM), composite="epsilon_plus_flat")
    assert not [n.name for n in compiled.model.graph.node if n.name.endswith(RECOMPUTED)]
    low = compile_explainer(onnx.parser.parse_model(POOL_AND_NORM), composite="epsilon_plus_flat", memory="low")
    assert [n.op_type for n in low.model.graph.node if n.name.endswith(RECOMPUTED)]


def test_an_unknown_memory_form_is_refused():
    with pytest.raises(ValueError, match="memory form 'tiny'.*default, low"):
        Explainer(onnx.parser.parse_model(RESIDUAL), memory="tiny")


_DRNG = np.random.default_rng(3)


def _block(h: str, k: int) -> str:
    """One attention block over the sequence, as torch.onnx writes a decoder's (two heads of width 4, computed
    reshapes, the layer's slice of a causal mask built from the input's shape) and its residual join."""
    return f"""
    q{k} = MatMul({h}, wq)
    k{k} = MatMul({h}, wk)
    v{k} = MatMul({h}, wv)
    qh{k} = Reshape(q{k}, heads)
    kh{k} = Reshape(k{k}, heads)
    vh{k} = Reshape(v{k}, heads)
    qt{k} = Transpose <perm = [0, 2, 1, 3]> (qh{k})
    kt{k} = Transpose <perm = [0, 2, 3, 1]> (kh{k})
    vt{k} = Transpose <perm = [0, 2, 1, 3]> (vh{k})
    scores{k} = MatMul(qt{k}, kt{k})
    scaled{k} = Mul(scores{k}, half)
    mask{k} = Slice(mask, zero, length, three)
    masked{k} = Add(scaled{k}, mask{k})
    p{k} = Softmax <axis = -1> (masked{k})
    o{k} = MatMul(p{k}, vt{k})
    ot{k} = Transpose <perm = [0, 2, 1, 3]> (o{k})
    om{k} = Reshape(ot{k}, merged)
    out{k} = MatMul(om{k}, wo)
    r{k} = Add({h}, out{k})"""


# two blocks over a sequence of any length
DECODER = f"""
<ir_version: 9, opset_import: ["" : 17]>
decoder (float[N, S, 8] x) => (float[N, 3] logits)
<float[8, 8] wq = {{{_values(_DRNG, 8, 8)}}}, float[8, 8] wk = {{{_values(_DRNG, 8, 8)}}},
 float[8, 8] wv = {{{_values(_DRNG, 8, 8)}}}, float[8, 8] wo = {{{_values(_DRNG, 8, 8)}}},
 float[8, 3] w2 = {{{_values(_DRNG, 8, 3)}}}, int64[4] heads = {{0, -1, 2, 4}}, int64[3] merged = {{0, -1, 8}},
 float half = {{0.5}}, float minus = {{-1e9}}, int64[2] ones = {{1, 1}}, int64 diagonal = {{1}},
 int64[1] zero = {{0}}, int64[1] three = {{3}}>
{{
    length = Shape <start = 1, end = 2> (x)
    square = Concat <axis = 0> (ones, length, length)
    filled = ConstantOfShape <value = float[1] {{1.0}}> (square)
    above = Trilu <upper = 1> (filled, diagonal)
    mask = Mul(above, minus)
    {_block("x", 1)}
    {_block("r1", 2)}
    pooled = ReduceMean <axes = [1], keepdims = 0> (r2)
    logits = MatMul(pooled, w2)
}}
"""


def _decoder_explained_alike_in_both_forms(model: onnx.ModelProto) -> None:
    x = np.random.default_rng(4).normal(size=(2, 7, 8)).astype(np.float32)
    default, low = (_relevances(model, "attn_lrp", x, memory) for memory in ("default", "low"))
    np.testing.assert_array_equal(low.outputs[0], default.outputs[0])
    np.testing.assert_allclose(low.relevance, default.relevance, rtol=1e-5, atol=1e-6 * np.abs(default.relevance).max())


def test_a_decoder_of_any_length_is_explained_alike_in_both_forms():
    _decoder_explained_alike_in_both_forms(onnx.parser.parse_model(DECODER))


def test_a_mask_built_from_the_inputs_shape_is_computed_once():
    """The causal mask depends on the input's shape, not on its values: the forward computes it once and keeps
    it; each layer's slice of it (read by one block) is recomputed in the relevance pass, where it is not the
    whole mask (here it is: canonical/whole_slices.py). Before, the mask counted as computed from the input and
    the relevance pass built it again, with its temporaries (torch's ScatterND-built mask: 512 MB of int64
    indices at 4096 tokens)."""
    low = compile_explainer(onnx.parser.parse_model(DECODER), composite="attn_lrp", memory="low")
    copied = {n.op_type for n in low.model.graph.node if n.name.endswith(RECOMPUTED)}
    assert copied and not copied & {"ConstantOfShape", "Trilu"}


def test_only_copies_that_read_no_other_copy_read_checkpoints_through_the_signal():
    """A copy that reads another copy already waits for the relevance pass and differs from the node it copies,
    so the checkpoints it reads need no dependency on the signal; each such dependency is a pass over the
    checkpoint (the mask that each head's scores add: [seq, seq] per head and layer)."""
    low = compile_explainer(onnx.parser.parse_model(DECODER), composite="attn_lrp", memory="low")
    gated = {n.input[0] for n in low.model.graph.node if "/after/" in n.name}
    assert gated and "mask" not in gated


def test_a_float_cast_of_a_checkpoint_is_read_as_the_checkpoint():
    """torch's exports cast each layer's mask to its own type: the relevance pass reads the kept mask itself,
    with no copy of the cast and no pass through the signal (each was a [seq, seq] tensor per layer), and the
    two forms explain alike."""
    text = DECODER.replace("mask1 = Slice(mask, zero, length, three)", "mask1 = Cast <to = 1> (mask)").replace(
        "mask2 = Slice(mask, zero, length, three)", "mask2 = Cast <to = 1> (mask)")
    model = onnx.parser.parse_model(text)
    low = compile_explainer(model, composite="attn_lrp", memory="low")
    assert not [n.name for n in low.model.graph.node if n.name.endswith(RECOMPUTED) and n.op_type == "Cast"]
    assert "mask" not in {n.input[0] for n in low.model.graph.node if "/after/" in n.name}
    _decoder_explained_alike_in_both_forms(model)


def test_shape_reads_are_taken_off_kept_tensors():
    """A relevance node that reads only a shape (a Reshape sent back needs its input's) reads dims of kept
    tensors that have them (onnxruntime's symbolic shape inference names them), instead of making the relevance
    pass recompute the tensor early, with every head's probabilities, just for its shape."""
    low = compile_explainer(onnx.parser.parse_model(DECODER), composite="attn_lrp", memory="low")
    shape_reads = [n.input[0] for n in low.model.graph.node if n.op_type in ("Shape", "Size")]
    assert shape_reads and not [name for name in shape_reads if name.endswith(RECOMPUTED)]


def profiled_events(compiled, tokens: int, tmp_path, **settings) -> list[dict]:
    """onnxruntime's profile of one run of DECODER's explainer (session options `settings` on top): the kernel
    events, in the order the nodes ran."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    for name, value in settings.items():
        setattr(options, name, value)
    session = ort.InferenceSession(compiled.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(4).normal(size=(1, tokens, 8)).astype(np.float32)
    session.run(None, {"x": x, compiled.target_input: np.array([0])})
    return [e for e in json.loads(Path(session.end_profiling()).read_text())
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]


@pytest.mark.parametrize("projections", ["q k v", "v k q"])
def test_the_relevance_pass_holds_one_heads_probabilities_at_a_time(projections, tmp_path):
    """In onnxruntime's order (default, all optimisations), the [queries, keys] tensors of one head's relevance
    (its recomputed scores and probabilities, the softmax rule's) are all dead before the next head's first is
    computed, whichever projection the model computes first (onnxruntime's order follows the graph's). Without
    the signals at one head's Q, K and V tied together, the relevance to Q of every head ran before that to K
    and V, with every head's probabilities held until then (or the other way round)."""
    text = DECODER
    if projections == "v k q":   # the projections written in the other order
        for k in (1, 2):
            lines = [f"q{k} = MatMul(", f"k{k} = MatMul(", f"v{k} = MatMul("]
            rows = {line: next(row for row in text.splitlines() if row.strip().startswith(line)) for line in lines}
            text = text.replace(rows[lines[0]], "@q@").replace(rows[lines[2]], rows[lines[0]]).replace(
                "@q@", rows[lines[2]])
    compiled = compile_explainer(onnx.parser.parse_model(text), composite="attn_lrp", memory="low")
    tokens = 7
    events = profiled_events(compiled, tokens, tmp_path, optimized_model_filepath=str(tmp_path / "optimised.onnx"))
    order = {e["name"][:-len("_kernel_time")]: k for k, e in enumerate(events)}
    square = {e["name"][:-len("_kernel_time")] for e in events   # float [1, 1, tokens, tokens] outputs
              if int(e["args"].get("output_size", 0)) == tokens * tokens * 4}
    nodes = onnx.load(str(tmp_path / "optimised.onnx")).graph.node
    relevance_pass = min(order[n.name] for n in nodes if n.name.startswith("lrp/"))
    alive = []   # (made, last read, head) of each square tensor of a head's chain in the relevance pass
    for node in nodes:
        head = re.search(r"/head(\d+)", node.name)
        if node.name in square and head and order[node.name] > relevance_pass:
            last = max((order[n.name] for n in nodes if node.output[0] in n.input), default=order[node.name])
            alive.append((order[node.name], last, head.group(1)))
    assert {h for _, _, h in alive} == {"0", "1"}
    overlapping = [(a, b) for a in alive for b in alive if a[2] != b[2] and a[0] <= b[1] and b[0] <= a[1]]
    assert not overlapping, overlapping
