"""Each rewrite on a tiny model written as text."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper, parser

from onnxlrp.canonical import canonicalize


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _with_inits(text, **arrays):
    model = parser.parse_model(text)
    for name, value in arrays.items():
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    return model


def test_batchnorm_folds_into_conv_and_outputs_stay(rng):
    model = _with_inits("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 2, 5, 5] x) => (float[N, 3, 5, 5] y) {
            c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
            y = BatchNormalization (c, s, t, m, v)
        }""", w=rng.normal(size=(3, 2, 3, 3)), b=rng.normal(size=3), s=rng.uniform(0.5, 2, 3),
        t=rng.normal(size=3), m=rng.normal(size=3), v=rng.uniform(0.5, 2, 3))
    canonical = canonicalize(model)
    assert [n.op_type for n in canonical.model.graph.node] == ["Conv"]
    x = rng.normal(size=(2, 2, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(_run(canonical.model, x), _run(model, x), rtol=1e-5, atol=1e-5)


def test_matmul_add_becomes_gemm_and_logits_found(rng):
    model = _with_inits("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[N, 3] p) {
            h = MatMul (x, w)
            z = Add (h, b)
            d = Dropout (z)
            p = Softmax <axis = 1> (d)
        }""", w=rng.normal(size=(4, 3)), b=rng.normal(size=3))
    canonical = canonicalize(model)
    ops = [n.op_type for n in canonical.model.graph.node]
    assert ops == ["Gemm", "Softmax"]
    assert canonical.logits == canonical.model.graph.node[0].output[0]
    x = rng.normal(size=(2, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(canonical.model, x), _run(model, x), rtol=1e-6)


def test_old_opset_and_initializers_as_inputs_are_normalised(rng):
    model = _with_inits("""
        <ir_version: 3, opset_import: ["" : 9]>
        g (float[1, 4] x, float[3, 4] w) => (float[1, 3] y) {
            y = Gemm <transB = 1> (x, w)
        }""", w=rng.normal(size=(3, 4)))
    canonical = canonicalize(model)
    assert [i.name for i in canonical.model.graph.input] == ["x"]
    assert canonical.model.opset_import[0].version >= 17
    onnx.checker.check_model(canonical.model, full_check=True)


def test_auto_pad_becomes_explicit(rng):
    model = _with_inits("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 1, 7, 7] x) => (float[N, 1, 4, 4] y) {
            y = Conv <auto_pad = "SAME_UPPER", strides = [2, 2]> (x, w)
        }""", w=rng.normal(size=(1, 1, 3, 3)))
    canonical = canonicalize(model)
    conv = canonical.model.graph.node[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
    assert "auto_pad" not in attrs and list(attrs["pads"]) == [1, 1, 1, 1]
