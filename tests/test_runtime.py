"""Explainer: several targets per sample in one call, whole relevance tensors per layer, the plain
forward model."""
import platform

import numpy as np
import onnxruntime as ort
import pytest

from onnxlrp import Explainer
from onnxlrp.errors import InputError, OnnxLrpError
from onnxlrp import runtime
from onnxlrp.runtime import forward_model


def test_top_k_gives_one_heatmap_per_class(models_dir, rng):
    explainer = Explainer(models_dir / "tiny_resnet.onnx")
    x = rng.normal(size=(3, 3, 32, 32)).astype(np.float32)
    result = explainer.explain(x, top_k=3)
    logits = explainer.logits(x)
    np.testing.assert_array_equal(result.target, np.argsort(-logits, axis=1)[:, :3])
    assert result.relevance.shape == (3, 3, 3, 32, 32)
    np.testing.assert_allclose(result.outputs[0], logits, rtol=1e-5, atol=1e-6)
    for j in range(3):
        single = explainer.explain(x, target=result.target[:, j])
        np.testing.assert_allclose(result.relevance[:, j], single.relevance, rtol=1e-5, atol=1e-7)


def test_two_dimensional_target_and_bad_requests(models_dir, rng):
    explainer = Explainer(models_dir / "tiny_vgg.onnx")
    x = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    result = explainer.explain(np.concatenate([x, x]), target=np.array([[1, 4], [0, 9], [1, 4], [0, 9]]),
                               mode="prob", batch_size=3)
    assert result.target.tolist() == [[1, 4], [0, 9], [1, 4], [0, 9]]
    np.testing.assert_allclose(result.relevance[:2], result.relevance[2:], rtol=1e-6)
    with pytest.raises(InputError, match="either target or top_k"):
        explainer.explain(x, target=1, top_k=2)
    with pytest.raises(InputError, match="top_k"):
        explainer.explain(x, top_k=11)
    with pytest.raises(InputError, match="2-D target"):
        explainer.explain(x, target=np.zeros((3, 2), int))


def test_layer_relevances_are_the_tensors_behind_the_layer_sums(models_dir, rng):
    explainer = Explainer(models_dir / "tiny_vgg.onnx", layer_sums=True, layer_relevances=True)
    x = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    result = explainer.explain(x)
    compiled = explainer.compiled()
    labels = [name.split("/", 1)[1] for name in compiled.layer_relevance_outputs]
    assert labels[0] == "output" and labels[-1] == "input/image"
    for name, tensor in result.layer_relevances.items():
        label = name.split("/", 1)[1]
        np.testing.assert_allclose(tensor.reshape(2, -1).sum(1), result.layer_sums[f"lrp_sum/{label}"], rtol=1e-4,
                                   atol=1e-6)
    np.testing.assert_array_equal(result.layer_relevances["lrp_relevance/input/image"], result.relevance)
    assert result.layer_relevances[compiled.layer_relevance_outputs[2]].shape == (2, 16 * 8 * 8)  # the first dense layer's input


def test_forward_model_is_the_plain_model(models_dir, rng):
    explainer = Explainer(models_dir / "tiny_vgg.onnx")
    forward = forward_model(explainer.compiled())
    assert not any(node.name.startswith("lrp/") for node in forward.graph.node)
    assert [i.name for i in forward.graph.input] == ["image"]
    x = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(forward.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"image": x})[0]
    probabilities = explainer.explain(x).outputs[0]
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), probabilities, rtol=1e-5)


def test_replace_keeps_every_setting_but_the_changed_ones(models_dir):
    explainer = Explainer(models_dir / "tiny_vgg.onnx", composite="zplus", layer_sums=True, threads=1)
    other = explainer.replace(composite="epsilon")
    assert repr(other.composite).startswith("Uniform(rule=Epsilon") and other.layer_sums
    assert other.session_options is explainer.session_options and other.model is not explainer.model
    with pytest.raises(TypeError, match="threads"):
        explainer.replace(threads=2)


def test_one_explainer_shared_by_threads_gives_the_sequential_results(models_dir, rng):
    """Inference servers call one session from many threads: results must not mix between calls. The
    first calls race to build the session, so the explainer is fresh."""
    from concurrent.futures import ThreadPoolExecutor

    explainer = Explainer(models_dir / "small_vgg.onnx", threads=1)
    requests = [(rng.normal(size=(n, 3, 32, 32)).astype(np.float32), rng.integers(-1, 10, size=n))
                for n in (1, 3, 2, 5, 1, 4, 2, 3, 1, 2, 6, 1)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        concurrent = list(pool.map(lambda r: explainer.explain(r[0], target=r[1]), requests))
    assert len(explainer._compiled) == 1
    sequential = Explainer(models_dir / "small_vgg.onnx", threads=1)
    for (x, target), got in zip(requests, concurrent):
        expected = sequential.explain(x, target=target)
        np.testing.assert_array_equal(got.relevance, expected.relevance)
        np.testing.assert_array_equal(got.target, expected.target)


def test_minus_one_in_a_target_array_is_the_predicted_class(models_dir, rng):
    explainer = Explainer(models_dir / "tiny_resnet.onnx")
    x = rng.normal(size=(3, 3, 32, 32)).astype(np.float32)
    predicted = explainer.explain(x).target
    mixed = explainer.explain(x, target=[-1, 2, -1])
    assert mixed.target.tolist() == [predicted[0], 2, predicted[2]]
    with pytest.raises(InputError, match="out of range"):
        explainer.explain(x, target=[-2, 0, 0])


def test_a_provider_the_build_lacks_is_a_clear_error(models_dir):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(InputError, match="onnxruntime-gpu"):
        Explainer(models_dir / "tiny_resnet.onnx", providers=["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_a_provider_that_cannot_start_is_an_error_not_a_silent_cpu_run(models_dir, monkeypatch):
    """onnxruntime-gpu without its CUDA libraries logs a line and runs the session on the CPU."""
    class FellBack:
        def __init__(self, *args, **kwargs):
            pass

        def get_providers(self):
            return ["CPUExecutionProvider"]

    model = (models_dir / "tiny_resnet.onnx").read_bytes()
    assert runtime.new_session(model, None, ["CPUExecutionProvider"]).get_providers() == ["CPUExecutionProvider"]
    monkeypatch.setattr(runtime.ort, "InferenceSession", FellBack)
    with pytest.raises(InputError, match="could not start CUDAExecutionProvider.*CUDA and cuDNN libraries"):
        runtime.new_session(model, None, runtime.CUDA_PROVIDERS)


def test_the_cuda_provider_runs_full_float32():
    """TF32 (onnxruntime's CUDA default) would break the 1e-4 agreement with Zennit."""
    name, options = runtime.CUDA_PROVIDERS[0]
    assert name == "CUDAExecutionProvider" and options["use_tf32"] == "0"


def test_sessions_keep_the_arena_but_not_the_memory_pattern(models_dir):
    """The pattern's block comes on top of the arena's chunks from the first call: twice the memory."""
    options = runtime.default_session_options(2)
    assert options.enable_cpu_mem_arena and not options.enable_mem_pattern
    explainer = Explainer(models_dir / "small_vgg.onnx", composite="epsilon_plus_flat", threads=2)
    assert not explainer.session_options.enable_mem_pattern


def test_the_heap_is_trimmed_after_compiling_and_after_building_a_session(models_dir, monkeypatch, rng):
    """glibc keeps the freed temporaries of both (hundreds of MB on ResNet-50) unless asked to give them back."""
    calls = []
    monkeypatch.setattr(runtime, "release_freed_memory", lambda: calls.append(1))
    explainer = Explainer(models_dir / "tiny_resnet.onnx", threads=1)
    explainer.compiled()
    assert len(calls) == 1
    x = rng.normal(size=(1, 3, 32, 32)).astype(np.float32)
    explainer.explain(x)
    explainer.explain(x)
    assert len(calls) == 2      # once per compile and once per session, not per call


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_malloc_trim_is_found_with_glibc():
    assert runtime._malloc_trim() is not None
    runtime.release_freed_memory()


def test_a_string_names_one_input_or_output(tmp_path, rng):
    """inputs="input_ids" is the input input_ids (not the inputs 'i', 'n', ...), output="logits" the output."""
    pytest.importorskip("tokenizers")
    from text_model import write_text_model
    model, _ = write_text_model(tmp_path)
    ids = rng.integers(0, 10, size=(2, 5))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    by_default = Explainer(model, composite="attn_lrp").explain(feeds, target=1)
    named = Explainer(model, composite="attn_lrp", inputs="input_ids", output="logits").explain(feeds, target=1)
    assert list(named.relevances) == ["input_ids"]
    np.testing.assert_array_equal(named.relevance, by_default.relevance)
    with pytest.raises(OnnxLrpError, match="has no input 'ids'"):
        Explainer(model, composite="attn_lrp", inputs="ids").compiled()


def test_an_explainer_onnxruntime_rejects_is_one_line_naming_onnxlrp_as_the_culprit(models_dir, monkeypatch, tmp_path):
    """A bug of ours that made onnxruntime refuse the explainer is said as such, in one line, never as a raw
    onnxruntime message that blames the user's model."""
    from onnxlrp import compiler

    real = compiler.explainer_model

    def broken(*args):
        model = real(*args)
        model.graph.node[-1].input[0] = "l"     # a dangling input, as a bug would leave it
        return model

    monkeypatch.setattr(compiler, "explainer_model", broken)
    with pytest.raises(OnnxLrpError) as error:
        Explainer(models_dir / "tiny_vgg.onnx").explain(np.zeros((1, 3, 32, 32), np.float32))
    message = str(error.value)
    assert "a bug in onnxlrp" in message and "\n" not in message
    with pytest.raises(OnnxLrpError, match="a bug in onnxlrp"):
        compiler.compile(models_dir / "tiny_vgg.onnx", tmp_path / "explainer.onnx")
    assert not (tmp_path / "explainer.onnx").exists()


def _dense_model(weight: np.ndarray):
    """y = x @ w, with w stored as raw bytes (over the 1 KiB from which weights go beside a model file)."""
    from onnx import TensorProto, helper, numpy_helper
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", weight.shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", weight.shape[1]])],
                              [numpy_helper.from_array(weight.astype(np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_large_model_makes_its_session_from_a_file_and_stays_as_it_was(monkeypatch):
    """Above FILE_SESSION_BYTES a session is built from a temporary file with the weights beside it, which
    onnxruntime maps (serialised to bytes, the model would be held twice more); the proto is left as it was."""
    import onnxruntime

    rng = np.random.default_rng(0)
    model = _dense_model(rng.normal(size=(4, 300)))
    before = model.SerializeToString()
    x = rng.normal(size=(2, 4)).astype(np.float32)
    expected = runtime.new_session(model, runtime.default_session_options(1), ["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    sources = []
    session = onnxruntime.InferenceSession
    monkeypatch.setattr(onnxruntime, "InferenceSession",
                        lambda source, *a, **k: (sources.append(source), session(source, *a, **k))[1])
    monkeypatch.setattr(runtime, "FILE_SESSION_BYTES", 1000)
    served = runtime.new_session(model, runtime.default_session_options(1), ["CPUExecutionProvider"])
    np.testing.assert_array_equal(served.run(None, {"x": x})[0], expected)
    assert len(sources) == 1 and isinstance(sources[0], str) and "onnxlrp-session-" in sources[0]
    assert model.SerializeToString() == before


def test_a_large_model_without_room_for_its_temporary_file_says_so_and_tmpdir_helps(monkeypatch, tmp_path):
    """A session of a large model needs a temporary file: where it cannot be written, one line that says where and
    what to do (not 'a bug in onnxlrp'); following it works."""
    import tempfile

    from onnxlrp.errors import OnnxLrpError
    model = _dense_model(np.ones((4, 300)))
    monkeypatch.setattr(runtime, "FILE_SESSION_BYTES", 1000)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))
    with pytest.raises(OnnxLrpError, match="set TMPDIR to a folder with room") as refused:
        runtime.new_session(model, runtime.default_session_options(1), ["CPUExecutionProvider"])
    assert "bug" not in str(refused.value) and str(tmp_path / "gone") in str(refused.value)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    session = runtime.new_session(model, runtime.default_session_options(1), ["CPUExecutionProvider"])
    assert session.run(None, {"x": np.ones((1, 4), np.float32)})[0].shape == (1, 300)
    assert list(tmp_path.iterdir()) == []   # its temporary folder is gone
