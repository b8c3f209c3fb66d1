"""onnxlrp.validate: the bytes an initialiser holds against what its dims promise, packed 4-bit types too."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxlrp.errors import ModelLoadError
from onnxlrp.validate import validate


def _with_initializer(tensor: onnx.TensorProto) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [tensor])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize("elem_type", [TensorProto.UINT4, TensorProto.INT4])
def test_packed_four_bit_weights_hold_half_a_byte_each(elem_type):
    """A [128, 63] uint4 table (as onnxruntime-genai's GatherBlockQuantized reads) holds ceil(128 * 63 / 2) bytes."""
    packed = helper.make_tensor("q", elem_type, [128, 63], np.zeros(128 * 63 // 2, np.uint8).tobytes(), raw=True)
    validate(_with_initializer(packed))
    short = onnx.TensorProto()
    short.CopyFrom(packed)
    short.raw_data = short.raw_data[:100]
    with pytest.raises(ModelLoadError, match="the file is damaged"):
        validate(_with_initializer(short))


def test_a_model_too_large_for_onnxruntimes_loader_may_use_its_onnx_domain_ops(monkeypatch):
    """onnxruntime-genai writes SimplifiedLayerNormalization in the onnx domain; onnx's checker (which checks models
    above ORT_CHECK_LIMIT) does not know it, but must not refuse it, nor leave the model changed. An op neither
    knows is still refused."""
    import onnxlrp.validate as V
    monkeypatch.setattr(V, "ORT_CHECK_LIMIT", 0)
    node = helper.make_node("SimplifiedLayerNormalization", ["x", "g"], ["y"], epsilon=1e-6, axis=-1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor("g", TensorProto.FLOAT, [2], [1.0, 2.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    before = model.SerializeToString()
    validate(model)
    assert model.SerializeToString() == before
    model.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(ModelLoadError, match="fails onnx's checker"):
        validate(model)


def _small_dense() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 300],   # over save_model's 1 KiB for external data
                                rng.normal(size=1200).astype(np.float32).tobytes(), raw=True)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["logits"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 300])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_a_model_over_protobufs_limit_loads_checks_and_explains(monkeypatch, tmp_path):
    """A model over 2 GiB (here: the limit lowered to 1000 bytes) is checked without its weights (onnx's checker
    refuses such a protobuf in memory) and run from a temporary file (protobuf cannot serialise it); the
    explanation is the one of the model under the limit, and the explainer keeps its weights."""
    import onnxruntime

    import onnxlrp
    import onnxlrp.model as M
    import onnxlrp.validate as V
    from onnxlrp import Explainer
    x = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
    expected = Explainer(_small_dense(), composite="epsilon").explain(x).relevance
    monkeypatch.setattr(V, "PROTOBUF_LIMIT", 1000)
    monkeypatch.setattr(V, "ORT_CHECK_LIMIT", 0)   # as for any model over 2 GiB
    monkeypatch.setattr(onnxlrp.runtime, "FILE_SESSION_BYTES", 1000)
    checked, sources = [], []
    check, session = onnx.checker.check_model, onnxruntime.InferenceSession
    monkeypatch.setattr(onnx.checker, "check_model", lambda model, *a, **k: (checked.append(model), check(model))[1])
    monkeypatch.setattr(onnxruntime, "InferenceSession",
                        lambda source, *a, **k: (sources.append(source), session(source, *a, **k))[1])
    path = tmp_path / "model.onnx"
    M.save_model(_small_dense(), path)
    assert (tmp_path / "model.onnx.data").exists()
    explainer = Explainer(str(path), composite="epsilon")
    np.testing.assert_allclose(explainer.explain(x).relevance, expected, rtol=1e-6)
    compiled = explainer.compiled("logit")
    assert all(t.data_location == TensorProto.DEFAULT for t in compiled.model.graph.initializer)
    np.testing.assert_allclose(explainer.explain(x).relevance, expected, rtol=1e-6)   # a second session alike
    assert [s for s in sources if isinstance(s, str) and "onnxlrp-session-" in s]
    written = onnxlrp.compile(str(path), tmp_path / "explainer.onnx", composite="epsilon")   # and from the CLI
    assert (tmp_path / "explainer.onnx.data").exists()
    served = onnxruntime.InferenceSession(str(written), providers=["CPUExecutionProvider"])
    relevance = served.run(["relevance_x"], {"x": x, "target": np.full(len(x), -1, np.int64)})[0]
    np.testing.assert_allclose(relevance, expected, rtol=1e-6)
    assert checked and all(not m.graph.initializer for m in checked if isinstance(m, onnx.ModelProto))
    from onnxlrp.export.tensors import runs_at_batch   # Triton's batching probe
    assert runs_at_batch(onnx.load(str(path)), 3)
    assert not [s for s in sources if isinstance(s, bytes)]   # nothing serialised to bytes
    broken = _small_dense()
    broken.graph.node[0].op_type = "MatMulNot"
    with pytest.raises(ModelLoadError, match="MatMulNot"):
        validate(broken)


def test_byte_size_is_protobufs_size_without_serialising_the_weights():
    """is_large and the checks read the model's size from its structure and its weights' byte counts: protobuf's
    ByteSize encodes the whole message (seconds for a model of GBs). Raw, typed and sparse weights alike."""
    from onnxlrp.validate import byte_size
    model = _small_dense()
    model.graph.initializer.append(helper.make_tensor("typed", TensorProto.FLOAT, [50], np.arange(50.0)))
    model.graph.initializer.append(helper.make_tensor("ints", TensorProto.INT64, [3], [1, 2, 3]))
    sparse = helper.make_sparse_tensor(helper.make_tensor("s", TensorProto.FLOAT, [2], [1.0, 2.0]),
                                       helper.make_tensor("s_i", TensorProto.INT64, [2], [0, 5]), [10])
    model.graph.sparse_initializer.append(sparse)
    exact = model.ByteSize()
    assert exact - 64 <= byte_size(model) <= exact + 64


def test_the_checks_of_a_large_model_never_serialise_its_weights(monkeypatch):
    """Above ORT_CHECK_LIMIT onnx's checker gets the graph without the weights (checked by onnxlrp's own checks):
    given the whole model it would serialise a copy of every weight."""
    import onnxlrp.validate as V
    monkeypatch.setattr(V, "ORT_CHECK_LIMIT", 0)
    given = []
    check = onnx.checker.check_model
    monkeypatch.setattr(onnx.checker, "check_model", lambda model, *a, **k: (given.append(model), check(model))[1])
    validate(_small_dense())
    assert given and not given[0].graph.initializer
