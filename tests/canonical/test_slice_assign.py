"""torch's slice assignment (ScatterND over a box of indices) becomes Pad + Where, on models written as text."""
import warnings

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import parser

from onnxlrp.canonical.shapes import symbolic_dims
from onnxlrp.canonical.slice_assign import unscatter_slice_assignments

# x[:, :, row:row + S', col:col + T'] = y, built the way torch.onnx (TorchScript) builds transformers'
# causal mask: a Range per axis laid along its axis (Reshape, or a 1-D range on the last axis), expanded to
# y's shape, one column each of the [..., 4] grid.
ASSIGN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[B, H, S, T] x, float[B, H, P, Q] y) => (float[B, H, S, T] out) {{
    zero = Constant <value = int64 {{0}}> ()
    one = Constant <value = int64 {{1}}> ()
    row = Constant <value = int64 {{{row}}}> ()
    col = Constant <value = int64[1] {{{col}}}> ()
    step = Constant <value = int64 {{{step}}}> ()
    shape = Shape (y)
    b = Gather <axis = 0> (shape, zero)
    two = Constant <value = int64 {{2}}> ()
    three = Constant <value = int64 {{3}}> ()
    h = Gather <axis = 0> (shape, one)
    p = Gather <axis = 0> (shape, two)
    q = Shape <start = 3> (y)
    t = Shape <start = 3> (x)
    t0 = Squeeze (t)
    r0 = Range (zero, b, one)
    r1 = Range (zero, h, one)
    row_end = Add (row, p)
    r2 = Range (row, row_end, step)
    r3_all = Range (zero, t0, one)
    col_end = Add (col, q)
    r3 = Slice (r3_all, col, col_end)
    s0 = Constant <value = int64[4] {{-1, 1, 1, 1}}> ()
    s1 = Constant <value = int64[3] {{-1, 1, 1}}> ()
    s2 = Constant <value = int64[2] {{-1, 1}}> ()
    g0 = Reshape (r0, s0)
    g1 = Reshape (r1, s1)
    g2 = Reshape (r2, s2)
    e0 = Expand (g0, shape)
    e1 = Expand (g1, shape)
    e2 = Expand (g2, shape)
    e3 = Expand (r3, shape)
    last = Constant <value = int64[1] {{-1}}> ()
    u0 = Unsqueeze (e0, last)
    u1 = Unsqueeze (e1, last)
    u2 = Unsqueeze (e2, last)
    u3 = Unsqueeze (e3, last)
    indices = Concat <axis = -1> (u0, u1, u2, u3)
    out = ScatterND (x, indices, y)
}}
"""


def _run(model: onnx.ModelProto, **feeds) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _rewritten(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = unscatter_slice_assignments(gs.import_onnx(model))
    return gs.export_onnx(graph)


@pytest.mark.parametrize("row, col, x_shape, y_shape", [
    (0, 0, (1, 1, 6, 6), (1, 1, 6, 6)),     # the whole tensor, as transformers' mask at a prompt without past
    (0, 0, (2, 1, 5, 7), (2, 1, 5, 4)),     # the mask's first columns (an attention mask shorter than the keys)
    (2, 1, (2, 3, 6, 7), (2, 3, 3, 4)),     # a box inside
    (1, 0, (1, 2, 4, 3), (1, 2, 0, 3)),     # an empty box: nothing written
])
def test_a_box_assignment_writes_the_same_without_the_index_grid(row, col, x_shape, y_shape):
    model = parser.parse_model(ASSIGN.format(row=row, col=col, step=1))
    rewritten = _rewritten(model)
    ops = [n.op_type for n in rewritten.graph.node]
    assert "ScatterND" not in ops and "Where" in ops
    rng = np.random.default_rng(0)
    x = rng.normal(size=x_shape).astype(np.float32)
    y = rng.normal(size=y_shape).astype(np.float32)
    expected = _run(model, x=x, y=y)
    reference = x.copy()     # from the definition of the assignment, not from onnxruntime
    reference[:, :, row:row + y_shape[2], col:col + y_shape[3]] = y
    np.testing.assert_array_equal(expected, reference)
    np.testing.assert_array_equal(_run(rewritten, x=x, y=y), reference)


def test_indices_that_are_not_a_box_stay_a_scatter():
    strided = parser.parse_model(ASSIGN.format(row=0, col=0, step=2))    # rows 0, 2, 4: not contiguous
    assert "ScatterND" in [n.op_type for n in _rewritten(strided).graph.node]
    given = parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[4, 4] x, int64[N, 2] indices, float[N] y) => (float[4, 4] out) {
            out = ScatterND (x, indices, y)
        }""")
    assert "ScatterND" in [n.op_type for n in _rewritten(given).graph.node]
    # a malformed range (a vector start, which Range refuses at run time) is left as it is, not a crash
    vector_start = ASSIGN.format(row=0, col=0, step=1).replace("row = Constant <value = int64 {0}> ()",
                                                               "row = Constant <value = int64[2] {0, 1}> ()")
    assert "ScatterND" in [n.op_type for n in _rewritten(parser.parse_model(vector_start)).graph.node]


def test_a_range_laid_along_another_axis_stays_a_scatter():
    # rows' range reshaped to [-1, 1, 1, 1] (axis 0) but placed in the grid's third column
    text = ASSIGN.format(row=0, col=0, step=1).replace("g2 = Reshape (r2, s2)", "g2 = Reshape (r2, s0)")
    assert "ScatterND" in [n.op_type for n in _rewritten(parser.parse_model(text)).graph.node]


def test_the_assignment_keeps_the_shape_that_shape_inference_gives():
    """The head split and the low form's shape reads follow onnxruntime's symbolic shape inference, which
    misreads a Pad by computed pads: a causal mask's head axis of 1 came out unknown (on the 12-layer Llama,
    8), and the attentions were split wrongly or not at all."""
    mask_like = ASSIGN.format(row=0, col=0, step=1).replace(
        "g (float[B, H, S, T] x, float[B, H, P, Q] y) => (float[B, H, S, T] out)",
        "g (float[B, 1, S, T] x, float[B, 1, P, Q] y) => (float[B, 1, S, T] out)")
    dims = symbolic_dims(_rewritten(parser.parse_model(mask_like)))
    assert dims["out"] == dims["x"] == ["B", 1, "S", "T"]


def test_a_box_past_the_end_fails_as_the_scatter_does():
    model = parser.parse_model(ASSIGN.format(row=4, col=0, step=1))     # rows 4, 5, 6 of 6
    x = np.zeros((1, 1, 6, 3), np.float32)
    y = np.ones((1, 1, 3, 3), np.float32)
    for candidate in (model, _rewritten(model)):
        with pytest.raises(Exception):
            _run(candidate, x=x, y=y)


def test_a_torchscript_llama_explains_alike_without_its_mask_grid(tmp_path, monkeypatch):
    """transformers' causal mask as torch.onnx (TorchScript) exports it: the rewrite applies, and the explainer
    computes the same logits and relevance as with the ScatterND, a padded attention mask included."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import onnxlrp.canonical as canonical
    from onnxlrp.compiler import compile_explainer

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                      use_cache=False)
    config._attn_implementation = "eager"
    llama = transformers.LlamaForCausalLM(config).eval()

    class LogitsOnly(torch.nn.Module):       # the export tools/llm_fixtures.py makes
        def __init__(self):
            super().__init__()
            self.llama = llama

        def forward(self, input_ids, attention_mask):
            return self.llama(input_ids=input_ids, attention_mask=attention_mask).logits
    model = LogitsOnly().eval()
    ids = torch.randint(1, 64, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    path = tmp_path / "llama.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask",
                                                                                  "logits")})
    assert "ScatterND" in [n.op_type for n in onnx.load(str(path)).graph.node]

    def explain(memory):
        compiled = compile_explainer(str(path), composite="attn_lrp", memory=memory)
        session = ort.InferenceSession(compiled.model.SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                 compiled.target_input: np.full(2, -1, np.int64), compiled.position_input: np.full(2, -1, np.int64)}
        ops = {n.op_type for n in compiled.model.graph.node}
        return ops, session.run(None, feeds)

    for memory in ("default", "low"):
        ops, rewritten = explain(memory)
        assert "ScatterND" not in ops
        monkeypatch.setattr(canonical, "unscatter_slice_assignments", lambda graph: graph)
        ops, scattered = explain(memory)
        monkeypatch.undo()
        assert "ScatterND" in ops
        for got, want in zip(rewritten, scattered):
            np.testing.assert_array_equal(got, want)
