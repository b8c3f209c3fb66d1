"""A head's relevance over its queries in chunks, in a Loop (onnxlrp/compiler/query_chunks.py, memory="low"):
the default form's relevance, and no [queries, keys] tensor in the relevance pass."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest

from onnxlrp import Explainer
from onnxlrp import compiler
from onnxlrp.canonical.shapes import outer_reads
from onnxlrp.compiler import compile_explainer
from tests.compiler.test_recompute import DECODER, profiled_events

ort = pytest.importorskip("onnxruntime")


def _explain(model, composite: str, x: np.ndarray, memory: str):
    return Explainer(model, composite=composite, memory=memory).explain(x, target=np.zeros(len(x), np.int64))


@pytest.mark.parametrize("composite", ["attn_lrp", "cp_lrp"])
@pytest.mark.parametrize("tokens", [2, 6, 7])
def test_chunks_of_queries_explain_as_the_whole_attention(composite, tokens, monkeypatch):
    """Three queries a chunk: one chunk not full, two full ones, and two with one query left over. CP-LRP holds the
    probabilities constant: only V receives relevance from the Loop."""
    monkeypatch.setattr(compiler, "QUERY_CHUNK", 3)
    model = onnx.parser.parse_model(DECODER)
    low = compile_explainer(model, composite=composite, memory="low")
    loops = [n for n in low.model.graph.node if n.op_type == "Loop"]
    assert len(loops) == 4   # two blocks of two heads
    assert {len(n.output) for n in loops} == ({3} if composite == "attn_lrp" else {1})
    x = np.random.default_rng(5).normal(size=(2, tokens, 8)).astype(np.float32)
    default, chunked = (_explain(model, composite, x, memory) for memory in ("default", "low"))
    np.testing.assert_array_equal(chunked.outputs[0], default.outputs[0])
    np.testing.assert_allclose(chunked.relevance, default.relevance, rtol=1e-5,
                               atol=1e-6 * np.abs(default.relevance).max())


def test_the_relevance_pass_holds_no_whole_heads_scores(monkeypatch, tmp_path):
    """In onnxruntime's profile, no tensor the relevance pass makes (in the Loops' bodies or outside them) has a
    head's [queries, keys] elements: a chunk's [3, keys] at most. Without chunks, each head's recomputed scores,
    probabilities and softmax rule are [queries, keys]."""
    monkeypatch.setattr(compiler, "QUERY_CHUNK", 3)
    compiled = compile_explainer(onnx.parser.parse_model(DECODER), composite="attn_lrp", memory="low")
    tokens = 12
    events = profiled_events(compiled, tokens, tmp_path)
    relevance_pass = [e for e in events if e["args"].get("op_name") != "Loop"   # a Loop's: [queries, head] x 3
                      and (e["name"].startswith("lrp/") or "/recomputed" in e["name"])]
    sizes = [int(e["args"].get("output_size", 0)) for e in relevance_pass]
    assert max(sizes) >= 3 * tokens * 4                 # a chunk's rows of the scores, in the bodies
    assert tokens * tokens * 4 not in sizes
    forward = [e for e in events if e not in relevance_pass and int(e["args"].get("output_size", 0)) == tokens * tokens * 4]
    assert forward                                      # the forward computes whole heads, as inference does


def test_the_loops_read_checkpoints_and_recomputed_copies_only():
    """What a Loop's body reads from outside is a checkpoint (the input, the residual joins, the mask), a copy
    the relevance pass recomputed, a relevance tensor or a constant: never a forward tensor held from the forward
    (the heads' Q, K^T and V would then be held for the relevance pass, [seq, hidden] per layer)."""
    compiled = compile_explainer(onnx.parser.parse_model(DECODER), composite="attn_lrp", memory="low")
    nodes = compiled.model.graph.node
    forward = {o for n in nodes if not n.name.startswith("lrp/") and not n.name.endswith("/recomputed")
               for o in n.output}
    read = set().union(*(outer_reads(n) for n in nodes if n.op_type == "Loop"))
    assert read & {o for n in nodes if n.name.endswith("/recomputed") for o in n.output}
    assert read & forward <= {"x", "r1", "r2", "mask"}


def test_a_fixed_number_of_queries_keeps_the_whole_attention():
    """An export whose sequence has a fixed size (a ViT at one resolution) may name it in its reshapes, which the
    rules then copy: its heads are not chunked, and it is explained as before."""
    model = onnx.parser.parse_model(DECODER.replace("float[N, S, 8] x", "float[N, 7, 8] x"))
    low = compile_explainer(model, composite="attn_lrp", memory="low")
    assert not [n for n in low.model.graph.node if n.op_type == "Loop"]
    x = np.random.default_rng(6).normal(size=(2, 7, 8)).astype(np.float32)
    default, whole = (_explain(model, "attn_lrp", x, memory) for memory in ("default", "low"))
    np.testing.assert_allclose(whole.relevance, default.relevance, rtol=1e-5,
                               atol=1e-6 * np.abs(default.relevance).max())


def _post_norm(text: str) -> str:
    """Each block's attention output normalised (an RMSNorm) before its residual join, as Gemma's are."""
    for k, h in ((1, "x"), (2, "r1")):
        text = text.replace(f"r{k} = Add({h}, out{k})", f"""sq{k} = Mul(out{k}, out{k})
    ms{k} = ReduceMean <axes = [-1]> (sq{k})
    var{k} = Add(ms{k}, eps)
    sd{k} = Sqrt(var{k})
    inv{k} = Reciprocal(sd{k})
    normed{k} = Mul(out{k}, inv{k})
    r{k} = Add({h}, normed{k})""")
    return text.replace("float half = {0.5},", "float half = {0.5}, float eps = {1e-6},")


def test_a_norm_after_the_attention_keeps_its_input(monkeypatch, tmp_path):
    """A norm between the attention and its join (Gemma's) needs its statistics before the relevance pass reaches
    the heads: its input is kept ([seq, hidden]) rather than recomputed from whole heads, which would compute
    every head's scores a second time, and hold them, beside the Loops'. Explained as the default form."""
    monkeypatch.setattr(compiler, "QUERY_CHUNK", 3)
    model = onnx.parser.parse_model(_post_norm(DECODER))
    low = compile_explainer(model, composite="attn_lrp", memory="low")
    recomputed = {n.output[0] for n in low.model.graph.node if n.name.endswith("/recomputed")}
    assert not {"out1/recomputed", "out2/recomputed"} & recomputed
    assert "ms1/recomputed" in recomputed          # the statistics, from the kept input
    assert not [n for n in low.model.graph.node if n.name.endswith("/recomputed") and n.op_type == "Softmax"]
    x = np.random.default_rng(7).normal(size=(2, 7, 8)).astype(np.float32)
    default, chunked = (_explain(model, "attn_lrp", x, memory) for memory in ("default", "low"))
    np.testing.assert_allclose(chunked.relevance, default.relevance, rtol=1e-5,
                               atol=1e-6 * np.abs(default.relevance).max())
