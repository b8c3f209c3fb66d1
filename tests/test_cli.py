"""The command line: compile, explain, inspect; clear one-line errors; input files never touched."""
import hashlib
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxlrp.cli import main


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_compile_writes_explainer_and_leaves_input(tmp_path, models_dir):
    model = tmp_path / "tiny_vgg.onnx"
    shutil.copy(models_dir / "tiny_vgg.onnx", model)
    before = _digest(model)
    assert main(["compile", str(model), "-o", str(tmp_path / "out.onnx"), "--composite", "epsilon_gamma_box",
                 "--low", "-3", "--high", "3"]) == 0
    assert _digest(model) == before
    explainer = onnx.load(str(tmp_path / "out.onnx"))
    onnx.checker.check_model(explainer, full_check=True)
    assert [i.name for i in explainer.graph.input] == ["image", "target"]
    assert "relevance_image" in [o.name for o in explainer.graph.output]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_explain_image_and_npy(tmp_path, models_dir, capsys):
    out = tmp_path / "heat"
    assert main(["explain", str(models_dir / "tiny_vgg.onnx"), str(models_dir / "example.png"), "--target", "3",
                 "--out", str(out)]) == 0
    relevance = np.load(out / "example.relevance.npy")
    assert relevance.shape == (3, 32, 32) and np.all(np.isfinite(relevance))
    assert (out / "example.heatmap.png").stat().st_size > 0
    assert main(["explain", str(models_dir / "mlp.onnx"), str(models_dir / "example_features.npy"),
                 "--out", str(out)]) == 0
    assert np.load(out / "example_features.relevance.npy").shape == (20,)


def test_inspect_lists_rules(models_dir, capsys):
    assert main(["inspect", str(models_dir / "tiny_resnet.onnx")]) == 0
    text = capsys.readouterr().out
    assert "Flat" in text and "ZPlus" in text and "Epsilon" in text and "Norm" in text


def test_truncated_model_is_a_one_line_error(tmp_path, models_dir, capsys):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes((models_dir / "tiny_vgg.onnx").read_bytes()[:500])
    assert main(["compile", str(broken), "-o", str(tmp_path / "x.onnx")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "broken.onnx" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


def test_unsupported_op_names_op_node_and_remedy(tmp_path, capsys):
    nodes = [helper.make_node("Cos", ["x"], ["y"], name="weird_cos"), helper.make_node("Flatten", ["y"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "cos.onnx"
    onnx.save(model, str(path))
    assert main(["inspect", str(path)]) == 1
    out = capsys.readouterr().out
    assert "Cos" in out and "weird_cos" in out and "Pass" in out
    assert main(["compile", str(path), "-o", str(tmp_path / "cos.lrp.onnx")]) != 0
    assert "weird_cos" in capsys.readouterr().err


def test_bad_inputs_are_reported(tmp_path, models_dir, capsys):
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full(20, np.nan, np.float32))
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros(7, np.float32))
    assert main(["explain", str(models_dir / "mlp.onnx"), str(wrong), "--out", str(tmp_path / "o")]) != 0
    assert "expects" in capsys.readouterr().err
    assert main(["explain", str(models_dir / "mlp.onnx"), str(nan), "--out", str(tmp_path / "o")]) != 0
    assert "NaN" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["compile", "--help"], ["explain", "--help"], ["inspect", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage" in capsys.readouterr().out
