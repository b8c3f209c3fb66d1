"""Triton model repositories: the config parses with Triton's own ModelConfig protobuf, names and dims
match the explainer model, and the model in the repository gives the in-process result."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxlrp import Explainer
from onnxlrp.cli import main
from onnxlrp.errors import OnnxLrpError
from onnxlrp.export import export
from onnxlrp.export.triton import validate_config

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] ships Triton's model-config schema")
TYPES = {TensorProto.FLOAT: "TYPE_FP32", TensorProto.INT64: "TYPE_INT64"}


def _parsed(model_dir):
    return validate_config((model_dir / "config.pbtxt").read_text(), required=True)


def _served_model(model_dir, version=1):
    path = model_dir / str(version) / "model.onnx"
    return path / "model.onnx" if path.is_dir() else path


def _check_against_model(config, model_path):
    """What Triton's onnxruntime backend checks at load time: every config tensor exists in the model with
    the same type, and the dims (with the batch axis when batching) agree where the model fixes them."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    model = onnx.load(str(model_path), load_external_data=False)
    declared = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
    config_tensors = list(config.input) + list(config.output)
    assert sorted(t.name for t in config_tensors) == sorted(
        [i.name for i in session.get_inputs()] + [o.name for o in session.get_outputs()])
    for tensor in config_tensors:
        value = declared[tensor.name].type.tensor_type
        from tritonclient.grpc import model_config_pb2
        assert model_config_pb2.DataType.Name(tensor.data_type) == TYPES[value.elem_type]
        model_dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.shape.dim]
        dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
        if config.max_batch_size > 0:
            dims = [-1] + dims
        assert len(dims) == len(model_dims), tensor.name
        assert all(m == -1 or d == m for d, m in zip(dims, model_dims)), (tensor.name, dims, model_dims)


def _run_like_triton(config, model_path, x, target):
    """Feed the model the way Triton does: [batch] + dims, reshaped where the config says so."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    requests = {"image": x, "target": target.reshape(-1, 1)}
    feeds = {t.name: requests[t.name].reshape((len(x),) + tuple(t.reshape.shape)) if t.HasField("reshape")
             else requests[t.name] for t in config.input}
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def test_fixed_batch_model_exports_with_batching(tmp_path, models_dir, rng):
    """tiny_vgg's input is fixed at batch 1; its explainer runs at any batch, so Triton may batch it."""
    repo = tmp_path / "repo"
    model_dir = export(models_dir / "tiny_vgg.onnx", repo, format="triton")
    assert model_dir == repo / "tiny_vgg_lrp" and (model_dir / "1" / "model.onnx").is_file()
    config = _parsed(model_dir)
    assert config.name == "tiny_vgg_lrp" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
    assert [g.kind for g in config.instance_group] == [config.instance_group[0].KIND_CPU]
    tensors = {t.name: t for t in list(config.input) + list(config.output)}
    assert list(tensors["image"].dims) == [3, 32, 32] and list(tensors["relevance_image"].dims) == [3, 32, 32]
    assert list(tensors["target"].dims) == [1] and list(tensors["target"].reshape.shape) == []
    assert list(tensors["probabilities"].dims) == [10]
    _check_against_model(config, _served_model(model_dir))
    x = rng.normal(size=(3, 3, 32, 32)).astype(np.float32)
    target = np.array([2, -1, 7], np.int64)
    served = _run_like_triton(config, _served_model(model_dir), x, target)
    expected = Explainer(models_dir / "tiny_vgg.onnx").explain(x, target=target)
    np.testing.assert_allclose(served["relevance_image"], expected.relevance, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(served["target_explained"], expected.target)


def test_dynamic_batch_model_gpu_instances_and_external_data(tmp_path, models_dir, rng):
    assert main(["export", str(models_dir / "tiny_resnet.onnx"), "--format", "triton", "--out", str(tmp_path),
                 "--name", "resnet_explainer", "--device", "gpu", "--instances", "2", "--threads", "2",
                 "--max-batch-size", "16", "--external-data", "--composite", "epsilon_gamma_box",
                 "--low", "-3", "--high", "3"]) == 0
    model_dir = tmp_path / "resnet_explainer"
    folder = model_dir / "1" / "model.onnx"
    assert folder.is_dir() and sorted(p.name for p in folder.iterdir()) == ["model.onnx", "model.onnx.data"]
    config = _parsed(model_dir)
    assert config.max_batch_size == 16
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU and config.instance_group[0].count == 2
    assert config.parameters["intra_op_thread_count"].string_value == "2"
    _check_against_model(config, folder / "model.onnx")
    x = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    served = _run_like_triton(config, folder / "model.onnx", x, np.array([1, 4], np.int64))
    from onnxlrp import composites
    expected = Explainer(models_dir / "tiny_resnet.onnx", composite=composites.EpsilonGammaBox(low=-3, high=3))
    np.testing.assert_allclose(served["relevance_image"], expected.explain(x, target=[1, 4]).relevance,
                               rtol=1e-6, atol=1e-7)


def _batch_one_model(path):
    """A model that only runs at batch 1: it concatenates a [1, 2] constant to its [1, 4] input."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Concat", ["x", "c"], ["xc"], axis=1),
             helper.make_node("Gemm", ["xc", "w", "b"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
                              initializer=[numpy_helper.from_array(np.ones((1, 2), np.float32), "c"),
                                           numpy_helper.from_array(rng.normal(size=(3, 6)).astype(np.float32), "w"),
                                           numpy_helper.from_array(np.zeros(3, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_model_that_cannot_batch_exports_without_batching(tmp_path, capsys):
    model_dir = export(_batch_one_model(tmp_path / "fixed.onnx"), tmp_path / "repo", format="triton")
    assert "without batching" in capsys.readouterr().out
    config = _parsed(model_dir)
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    tensors = {t.name: t for t in list(config.input) + list(config.output)}
    assert list(tensors["x"].dims) == [1, 4] and list(tensors["target"].dims) == [1]
    _check_against_model(config, _served_model(model_dir))


def test_versions_are_kept_and_never_overwritten_silently(tmp_path, models_dir):
    repo = tmp_path / "repo"
    export(models_dir / "mlp.onnx", repo, format="triton")
    first = (repo / "mlp_lrp" / "1" / "model.onnx").read_bytes()
    with pytest.raises(OnnxLrpError, match="already exists"):
        export(models_dir / "mlp.onnx", repo, format="triton", composite="epsilon")
    assert (repo / "mlp_lrp" / "1" / "model.onnx").read_bytes() == first
    export(models_dir / "mlp.onnx", repo, format="triton", composite="epsilon", version=2)
    assert (repo / "mlp_lrp" / "1" / "model.onnx").read_bytes() == first
    assert (repo / "mlp_lrp" / "2" / "model.onnx").is_file()
    export(models_dir / "mlp.onnx", repo, format="triton", overwrite=True)
    assert sorted(p.name for p in (repo / "mlp_lrp").iterdir()) == ["1", "2", "config.pbtxt"]


def test_schema_rejects_what_triton_does_not_know():
    good = 'name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
    assert validate_config(good, required=True).max_batch_size == 4
    with pytest.raises(OnnxLrpError, match="does not parse"):
        validate_config(good + "batch_size: 4\n", required=True)
    with pytest.raises(OnnxLrpError, match="does not parse"):
        validate_config(good + 'input [ { name: "x" data_type: TYPE_FLOAT32 dims: [ 3 ] } ]\n', required=True)
