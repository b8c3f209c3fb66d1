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


def test_a_model_handed_over_is_canonicalised_alike_and_let_go(rng):
    """Handed over in a one-element list, the model's only reference is canonicalize's, which lets it go (an LLM's
    GBs) once the first rewrite has copied it; the canonical model is the same. A Gemm already in canonical form
    keeps its weight as it is (no copy)."""
    text = """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[N, 2] y) {
            h = MatMul (x, w)
            r = Relu (h)
            y = Gemm <transB = 1> (r, v)
        }"""
    weights = dict(w=rng.normal(size=(4, 3)), v=rng.normal(size=(2, 3)))
    expected = canonicalize(_with_inits(text, **weights)).model
    handed = [_with_inits(text, **weights)]
    canonical = canonicalize(handed)
    assert handed == []
    assert canonical.model.SerializeToString() == expected.SerializeToString()
    gemm = canonical.model.graph.node[-1]
    assert gemm.op_type == "Gemm" and gemm.input[1] == "v"


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


def _ops_and_outputs_match(model, x_shape, rng):
    canonical = canonicalize(model)
    x = rng.normal(size=x_shape).astype(np.float32)
    np.testing.assert_allclose(_run(canonical.model, x), _run(model, x), rtol=1e-5, atol=1e-5)
    return [n.op_type for n in canonical.model.graph.node]


def test_bias_add_and_decomposed_batchnorm_fold_into_the_conv(rng):
    """paddle2onnx's Conv + Add(bias), then a BatchNorm split into Sub/Mul/Add/Div by constants."""
    model = _with_inits("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 2, 5, 5] x) => (float[N, 3, 5, 5] y) {
            c = Conv <pads = [1, 1, 1, 1]> (x, w)
            cb = Add (c, bias)
            s = Sub (cb, mean)
            d = Div (s, std)
            m = Mul (d, gamma)
            y = Add (beta, m)
        }""", w=rng.normal(size=(3, 2, 3, 3)), bias=rng.normal(size=(1, 3, 1, 1)), mean=rng.normal(size=(3, 1, 1)),
        std=rng.uniform(0.5, 2, (3, 1, 1)), gamma=rng.normal(size=(3, 1, 1)), beta=rng.normal(size=(3, 1, 1)))
    assert _ops_and_outputs_match(model, (2, 2, 5, 5), rng) == ["Conv"]


def test_input_normalisation_folds_into_an_unpadded_first_conv(rng):
    model = _with_inits("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 2, 5, 5] x) => (float[N, 4, 3, 3] y) {
            s = Sub (x, mean)
            n = Div (s, std)
            y = Conv <group = 2> (n, w, b)
        }""", mean=rng.normal(size=(1, 2, 1, 1)), std=rng.uniform(0.5, 2, (2, 1, 1)),
        w=rng.normal(size=(4, 1, 3, 3)), b=rng.normal(size=4))
    assert _ops_and_outputs_match(model, (2, 2, 5, 5), rng) == ["Conv"]


def test_shift_before_a_padded_conv_stays_but_scaling_folds(rng):
    """Padded zeros would mean x = mean after folding a shift: not exact, so the Sub stays (Pass)."""
    model = _with_inits("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 2, 5, 5] x) => (float[N, 3, 5, 5] y) {
            s = Sub (x, mean)
            n = Mul (s, scale)
            y = Conv <pads = [1, 1, 1, 1]> (n, w, b)
        }""", mean=rng.normal(size=(2, 1, 1)), scale=rng.uniform(0.5, 2, (2, 1, 1)),
        w=rng.normal(size=(3, 2, 3, 3)), b=rng.normal(size=3))
    assert _ops_and_outputs_match(model, (2, 2, 5, 5), rng) == ["Sub", "Conv"]


def test_a_spatially_varying_constant_is_not_folded(rng):
    model = _with_inits("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 2, 5, 5] x) => (float[N, 3, 5, 5] y) {
            c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
            y = Add (c, field)
        }""", w=rng.normal(size=(3, 2, 3, 3)), b=rng.normal(size=3), field=rng.normal(size=(1, 5, 5)))
    assert _ops_and_outputs_match(model, (2, 2, 5, 5), rng) == ["Conv", "Add"]


def test_zero_pad_folds_into_the_next_conv(rng):
    model = _with_inits("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 2, 5, 5] x) => (float[N, 3, 6, 4] y) {
            p = Pad (x, pads)
            y = Conv <pads = [0, 1, 0, 0]> (p, w, b)
        }""", w=rng.normal(size=(3, 2, 3, 3)), b=rng.normal(size=3))
    model.graph.initializer.append(numpy_helper.from_array(np.array([0, 0, 2, 0, 0, 0, 1, 0], np.int64), "pads"))
    assert _ops_and_outputs_match(model, (2, 2, 5, 5), rng) == ["Conv"]


def test_shapes_are_inferred_without_copying_the_weights(models_dir):
    """infer_shapes hands onnx a skeleton whose large initialisers are typed inputs: the same shapes as
    inferring on the whole model, and the model's own initialisers untouched."""
    from onnxlrp.canonical import infer_shapes

    model = onnx.load(models_dir / "small_vgg.onnx")
    assert any(np.prod(t.dims) > 1024 for t in model.graph.initializer)
    weights = [t.SerializeToString() for t in model.graph.initializer]
    expected = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    inferred = infer_shapes(model)
    shapes = lambda m: {v.name: v.type.SerializeToString() for v in m.graph.value_info}  # noqa: E731
    assert shapes(inferred) == shapes(expected) and shapes(inferred)
    assert [t.SerializeToString() for t in model.graph.initializer] == weights


def test_compiling_leaves_the_callers_model_as_it_was(models_dir):
    """The explainer is built inside the canonical model; that must be a model of the compiler's own."""
    from onnxlrp.compiler import compile_explainer

    model = onnx.load(models_dir / "tiny_resnet.onnx")
    model.metadata_props.add(key="author", value="someone")
    before = model.SerializeToString()
    explainer = compile_explainer(model, composite="epsilon_plus_flat").model
    assert model.SerializeToString() == before
    assert "author" not in {p.key for p in explainer.metadata_props} and explainer.producer_name == "onnxlrp"
    onnx.checker.check_model(explainer)


def test_shape_inference_keeps_the_exporters_types_for_what_it_cannot_derive():
    """An op onnx has no schema for: its output's type comes from the exporter's value_info, and the
    shapes below it follow from there."""
    from onnx import TensorProto, helper

    from onnxlrp.canonical import infer_shapes

    graph = helper.make_graph(
        [helper.make_node("Foo", ["x"], ["y"], domain="custom"), helper.make_node("Relu", ["y"], ["z"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        value_info=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)])
    dims = [d.dim_value for d in infer_shapes(model).graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 5]
