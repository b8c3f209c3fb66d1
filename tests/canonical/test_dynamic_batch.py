"""make_batch_dynamic on tiny models written as text: batch sizes baked into Reshapes (as torch.onnx's dynamo
exporter writes them, allowzero included) become dynamic where the data carries the batch; where the batch is
folded into other axes the model keeps its exported batch and the explainer is fed in chunks."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper, parser

from onnxlrp import Explainer, composites, rules
from onnxlrp.canonical import canonicalize


def _model(text, **arrays):
    model = parser.parse_model('<ir_version: 8, opset_import: ["" : 18]>' + text)
    for name, value in arrays.items():
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return model


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _per_sample(model, x):
    return np.concatenate([_run(model, x[i:i + 1]) for i in range(len(x))])


FLATTEN = """g (float[1, 2, 3] x) => (float[1, 4] y) {
    f = Reshape <allowzero = ALLOWZERO> (x, shape)
    y = MatMul (f, w)
}"""


def test_leading_one_of_a_flattening_reshape_becomes_the_batch_also_under_allowzero(rng):
    w = rng.normal(size=(6, 4)).astype(np.float32)
    x = rng.normal(size=(3, 2, 3)).astype(np.float32)
    for allowzero, target in [(0, [1, -1]), (1, [1, -1]), (1, [1, 6])]:
        model = _model(FLATTEN.replace("ALLOWZERO", str(allowzero)), shape=np.array(target, np.int64), w=w)
        canonical = canonicalize(model)
        assert canonical.batch is None
        onnx.checker.check_model(canonical.model, full_check=True)
        np.testing.assert_allclose(_run(canonical.model, x), _per_sample(model, x), rtol=1e-5, atol=1e-6)
        res = Explainer(model, composite=composites.Uniform(rules.LRP0())).explain(x, target=2)
        np.testing.assert_allclose(res.relevance, x * w[:, 2].reshape(2, 3), rtol=1e-5, atol=1e-6)


HEADS = """g (float[1, 4, 6] x) => (float[1, 3] y) {
    h = Reshape (x, heads)
    t = Transpose <perm = [1, 0, 2]> (h)
    s = Softmax <axis = -1> (t)
    m = Mul (s, t)
    back = Transpose <perm = [1, 0, 2]> (m)
    f = Reshape (back, flat)
    y = MatMul (f, w)
}"""


def test_a_batch_folded_into_other_axes_keeps_the_exported_batch_and_is_fed_in_chunks(rng):
    """[1, 4, 6] -> [4 * 1, 2, 3] (heads folded with the batch, as a static-shape export writes attention):
    no rewrite of leading entries makes this batch-free; the model keeps batch 1, every explainer input and
    output too, and the runtime feeds one sample at a time."""
    w = rng.normal(size=(24, 3)).astype(np.float32)
    model = _model(HEADS, heads=np.array([4, 2, 3], np.int64), flat=np.array([1, 24], np.int64), w=w)
    canonical = canonicalize(model)
    assert canonical.batch == 1
    x = rng.normal(size=(3, 4, 6)).astype(np.float32)
    ex = Explainer(model, composite="attn_lrp")
    compiled = ex.compiled()
    assert compiled.batch == 1
    assert compiled.model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    res = ex.explain(x, target=[0, 1, -1])
    singles = [ex.explain(x[i:i + 1], target=t).relevance[0] for i, t in enumerate([0, 1, res.target[2]])]
    np.testing.assert_allclose(res.relevance, np.stack(singles), rtol=1e-6)
    np.testing.assert_allclose(res.outputs[0], _per_sample(model, x), rtol=1e-5)


NOT_THE_BATCH = """g (float[1, 6, 4] x) => (float[1, 5] y) {
    t = Transpose <perm = [1, 0, 2]> (x)
    f = Reshape (t, rows)
    p = Reshape (f, grid)
    y = MatMul (p, w)
}"""


def test_a_leading_one_that_is_not_the_batch_is_left_alone(rng):
    """The second Reshape's leading 1 is not the batch (its data is [6, 4], rows of the sample): rewriting it
    to "copy the batch" would read 6; it stays, and the model keeps its batch of 1."""
    w = rng.normal(size=(24, 5)).astype(np.float32)
    model = _model(NOT_THE_BATCH, rows=np.array([6, 4], np.int64), grid=np.array([1, 24], np.int64), w=w)
    canonical = canonicalize(model)
    assert canonical.batch == 1
    x = rng.normal(size=(2, 6, 4)).astype(np.float32)
    res = Explainer(model, composite=composites.Uniform(rules.LRP0())).explain(x, target=4)
    np.testing.assert_allclose(res.outputs[0], _per_sample(model, x), rtol=1e-5)
    np.testing.assert_allclose(res.relevance, x * w[:, 4].reshape(6, 4), rtol=1e-5, atol=1e-6)
