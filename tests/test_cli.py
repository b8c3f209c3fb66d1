"""The command line: compile, explain, inspect; clear one-line errors; input files never touched."""
import hashlib
import json
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


def test_compile_and_explain_with_low_memory(tmp_path, models_dir):
    """--memory low: the explainer recomputes what it reads of the forward (its metadata says so), and explain
    gives the default form's relevance (tiny_resnet: residual joins are its checkpoints)."""
    import json

    assert main(["compile", str(models_dir / "tiny_resnet.onnx"), "-o", str(tmp_path / "low.onnx"),
                 "--memory", "low"]) == 0
    info = json.loads(next(p.value for p in onnx.load(str(tmp_path / "low.onnx")).metadata_props
                           if p.key == "onnxlrp"))
    assert info["memory"] == "low"
    x = np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    for memory in ("default", "low"):
        assert main(["explain", str(models_dir / "tiny_resnet.onnx"), str(tmp_path / "x.npy"), "--out",
                     str(tmp_path / memory), "--memory", memory, "--no-pictures"]) == 0
    default, low = (np.load(tmp_path / memory / "x.relevance.npy") for memory in ("default", "low"))
    np.testing.assert_allclose(low, default, rtol=1e-5, atol=1e-7)


def test_compile_with_external_data_gives_the_same_explainer(tmp_path, models_dir):
    import onnxruntime as ort

    assert main(["compile", str(models_dir / "tiny_vgg.onnx"), "-o", str(tmp_path / "ext.onnx"),
                 "--external-data"]) == 0
    assert main(["compile", str(models_dir / "tiny_vgg.onnx"), "-o", str(tmp_path / "one.onnx")]) == 0
    assert (tmp_path / "ext.onnx.data").stat().st_size > (tmp_path / "ext.onnx").stat().st_size
    assert not (tmp_path / "one.onnx.data").exists()
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    feeds = {"image": x, "target": np.array([3, -1], np.int64)}
    runs = [ort.InferenceSession(str(tmp_path / name)).run(["relevance_image"], feeds)[0]
            for name in ("ext.onnx", "one.onnx")]
    assert np.array_equal(runs[0], runs[1])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


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


@pytest.mark.parametrize("argv", [["--help"], ["compile", "--help"], ["explain", "--help"], ["inspect", "--help"],
                                  ["export", "--help"], ["evaluate", "--help"], ["bench", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage" in capsys.readouterr().out


def _tiny(nodes, tmp_path, name, opset=17, shape=(2, 2, 2)):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def test_declare_pass_and_linear(tmp_path, capsys):
    """DepthToSpace has no handler: declared linear, relevance is routed back exactly (a permutation);
    Cos declared linear is refused because it is not linear."""
    d2s = _tiny([helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, name="d2s"),
                 helper.make_node("Flatten", ["y"], ["logits"])], tmp_path, "d2s.onnx", shape=(4, 1, 2))
    assert main(["inspect", str(d2s), "--declare", "DepthToSpace=linear"]) == 0
    assert "linear map" in capsys.readouterr().out
    x = np.random.default_rng(0).uniform(0.5, 1.5, (1, 4, 1, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", x[0])
    assert main(["explain", str(d2s), str(tmp_path / "x.npy"), "--declare", "DepthToSpace=linear", "--mode", "one",
                 "--target", "3", "--out", str(tmp_path / "o")]) == 0
    relevance = np.load(tmp_path / "o" / "x.relevance.npy")
    import onnxruntime as ort
    y = ort.InferenceSession(str(d2s)).run(None, {"x": x})[0].ravel()
    assert np.isclose(relevance.sum(), 1.0, atol=1e-5) and np.count_nonzero(relevance) == 1
    assert np.isclose(x.ravel()[relevance.ravel() != 0][0], y[3])
    cos = _tiny([helper.make_node("Cos", ["x"], ["y"], name="cos"), helper.make_node("Flatten", ["y"], ["logits"])],
                tmp_path, "cos.onnx")
    assert main(["compile", str(cos), "--declare", "Cos=linear", "-o", str(tmp_path / "c.onnx")]) != 0
    assert "not a linear map" in capsys.readouterr().err
    assert main(["compile", str(cos), "--declare", "Cos=pass", "-o", str(tmp_path / "c.onnx")]) == 0
    assert main(["compile", str(cos), "--declare", "Cos", "-o", str(tmp_path / "c2.onnx")]) == 2


def test_control_flow_on_the_input_is_a_one_line_error(tmp_path, capsys):
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["a"])], "then", [],
                             [helper.make_tensor_value_info("a", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["b"])], "else", [],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="branch"),
             helper.make_node("Flatten", ["y"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(np.array(0, np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "if.onnx"
    onnx.save(model, str(path))
    before = _digest(path)
    assert main(["compile", str(path), "-o", str(tmp_path / "if.lrp.onnx")]) != 0
    err = capsys.readouterr().err.strip()
    assert "If" in err and "branch" in err and len(err.splitlines()) == 1
    assert _digest(path) == before and not (tmp_path / "if.lrp.onnx").exists()


def test_not_an_onnx_file(tmp_path, capsys):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a model")
    assert main(["inspect", str(path)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1
    assert path.read_text() == "this is not a model"


def test_multi_input_model_with_chosen_output(tmp_path, capsys):
    model = "models/corpus/helper_multi_io_op25.onnx"
    rng = np.random.default_rng(0)
    np.save(tmp_path / "img.npy", rng.normal(size=(3, 16, 16)).astype(np.float32))
    np.save(tmp_path / "feat.npy", rng.normal(size=6).astype(np.float32))
    out = tmp_path / "o"
    assert main(["explain", model, str(tmp_path / "img.npy"), "--output", "class_logits", "--input", "image",
                 "--out", str(out)]) == 2
    assert "--feed" in capsys.readouterr().err
    assert main(["explain", model, str(tmp_path / "img.npy"), "--output", "class_logits", "--input", "image",
                 "--feed", f"features={tmp_path / 'feat.npy'}", "--out", str(out)]) == 0
    assert np.load(out / "img.relevance.npy").shape == (3, 16, 16)
    assert np.load(out / "img.relevance.features.npy").shape == (6,)


@pytest.mark.parametrize("bad", ["text", "complex"])
def test_wrong_dtype_is_an_input_error(bad, models_dir):
    from onnxlrp import Explainer
    from onnxlrp.errors import InputError

    x = np.array([["a"] * 20]) if bad == "text" else np.zeros((1, 20), np.complex64)
    with pytest.raises(InputError, match="dtype"):
        Explainer(models_dir / "mlp.onnx").explain(x)


def test_evaluate_conservation_writes_report(tmp_path, models_dir, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "conservation", str(models_dir / "tiny_vgg.onnx"), str(models_dir / "example.png"),
                 "--out", str(out), "--quiet"]) == 0
    report = (out / "report.md").read_text()
    assert "| output |" in report and "relative sum" in report and "negative share" in report
    assert (out / "conservation.png").stat().st_size > 0
    assert "| output |" in capsys.readouterr().out


def test_evaluate_all_checks_write_one_report_with_pictures(tmp_path, models_dir, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "all", str(models_dir / "small_vgg.onnx"), str(models_dir / "example.png"),
                 "--out", str(out), "--steps", "8", "--max-layers", "2", "--injections", "3", "--quiet"]) == 0
    report = (out / "report.md").read_text()
    for title in ("## Heatmaps", "## Conservation", "## Selectivity", "## Model-parameter randomisation",
                  "## Cosine-similarity convergence", "## Continuity"):
        assert title in report
    for picture in ("heatmaps.png", "conservation.png", "pixel_flipping.png", "randomisation.png",
                    "randomisation_heatmaps.png", "convergence.png"):
        assert f"]({picture})" in report and (out / picture).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_takes_a_comma_separated_list_and_refuses_unknown_checks(tmp_path, models_dir, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "continuity,pixel_flipping", str(models_dir / "mlp.onnx"),
                 str(models_dir / "example_features.npy"), "--out", str(out), "--patch-size", "1", "--quiet"]) == 0
    report = (out / "report.md").read_text()
    assert report.index("## Continuity") < report.index("## Selectivity") and "## Heatmaps" not in report
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "conservation,sharpness", str(models_dir / "mlp.onnx"), "x.npy"])
    assert exit_info.value.code == 2 and "unknown check 'sharpness'" in capsys.readouterr().err


def test_explain_top_k_writes_one_heatmap_per_class(tmp_path, models_dir, capsys):
    out = tmp_path / "heat"
    assert main(["explain", str(models_dir / "small_vgg.onnx"), str(models_dir / "example.png"), "--top-k", "2",
                 "--out", str(out)]) == 0
    record = json.loads((out / "example.targets.json").read_text())
    classes = record["classes"]
    assert len(classes) == 2 and f"classes {classes[0]}, {classes[1]}" in capsys.readouterr().out
    for c in classes:
        for suffix in ("heatmap.png", "overlay.png", "relevance.npy"):
            assert (out / f"example.class{c}.{suffix}").exists()
    assert (out / "example.targets.png").exists()
    assert main(["explain", str(models_dir / "small_vgg.onnx"), str(models_dir / "example.png"), "--top-k", "2",
                 "--target", "1", "--out", str(out)]) == 2


def test_explain_with_nothing_readable_says_nothing_was_explained(tmp_path, models_dir, capsys):
    out = tmp_path / "h"
    assert main(["explain", str(models_dir / "tiny_vgg.onnx"), str(tmp_path / "missing.png"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "missing.png: no such file" in err and "nothing was explained" in err
    assert not out.exists()


def test_a_decompression_bomb_is_an_input_error(tmp_path, models_dir, capsys):
    from PIL import Image

    from onnxlrp.inputs import MAX_PIXELS
    bomb = tmp_path / "bomb.png"
    Image.new("1", (30000, 30000)).save(bomb, optimize=True)   # 900 M pixels in a small file
    assert bomb.stat().st_size < 2_000_000
    code = main(["explain", str(models_dir / "tiny_vgg.onnx"), str(bomb), "--out", str(tmp_path / "h")])
    err = capsys.readouterr().err
    assert code != 0 and "internal error" not in err
    assert "bomb.png" in err and str(MAX_PIXELS) in err
    large = tmp_path / "large.png"   # under PIL's own limit, over ours
    Image.new("L", (5000, 5000)).save(large)
    assert main(["explain", str(models_dir / "tiny_vgg.onnx"), str(large), "--out", str(tmp_path / "h")]) != 0
    assert "5000 x 5000 pixels; at most" in capsys.readouterr().err


def test_evaluate_report_says_why_plots_are_missing(tmp_path, models_dir, monkeypatch, capsys):
    from onnxlrp import pictures
    monkeypatch.setattr(pictures, "pyplot_or_none", lambda: None)
    assert main(["evaluate", "conservation", str(models_dir / "tiny_vgg.onnx"), str(models_dir / "example.png"),
                 "--out", str(tmp_path / "ev"), "--quiet"]) == 0
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "needs matplotlib" in report and "pip install matplotlib" in report
    assert not (tmp_path / "ev" / "conservation.png").exists()


def test_missing_extras_name_their_requirements():
    """The remedy names the extra's packages as pyproject.toml declares them, so that it works when followed
    (onnxlrp itself is on no package index)."""
    import tomllib
    from pathlib import Path

    from onnxlrp import extras
    declared = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    for extra in ("serve", "text", "ray", "mlflow"):
        expected = declared["project"]["optional-dependencies"][extra]
        assert extras.requirements(extra) == expected
        message = str(extras.missing(extra, "this", ImportError("x", name="pkg")))
        assert all(f"'{r}'" in message for r in expected) and "(pkg is missing)" in message
