"""Selections (onnxlrp.selections) and their command-line options, without a framework."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxlrp import Explainer, selections
from onnxlrp.cli import main
from onnxlrp.errors import OnnxLrpError


def test_region_masks_in_both_layouts():
    m = selections.region_mask((2, 3, 4, 5), cls=[1, 2], region=(1, 2, 3, 5))
    assert m.shape == (2, 3, 4, 5) and m[0, 1, 1:3, 2:5].all() and m.sum() == 2 * 6
    nhwc = selections.region_mask((1, 4, 5, 3), cls=2, region=(0, 0, 2, 2))
    assert nhwc[0, :2, :2, 2].all() and nhwc.sum() == 4
    resized = selections.region_mask((1, 2, 4, 4), cls=0, mask=np.array([[1, 0], [0, 0]]))
    np.testing.assert_array_equal(resized[0, 0], np.kron([[1, 0], [0, 0]], np.ones((2, 2))))
    with pytest.raises(OnnxLrpError, match="outside"):
        selections.region_mask((1, 2, 4, 4), cls=0, region=(0, 0, 5, 2))
    with pytest.raises(OnnxLrpError, match="class"):
        selections.region_mask((1, 2, 4, 4), cls=None, region=(0, 0, 2, 2))


def test_detection_masks_pick_the_class_score_of_one_box():
    v5 = selections.detection_mask((1, 10, 4 + 1 + 3), box=7, cls=2)
    assert v5[0, 7, 7] == 1 and v5.sum() == 1
    v8 = selections.detection_mask((1, 4 + 3, 10), box=7, cls=2)
    assert v8[0, 6, 7] == 1 and v8.sum() == 1
    with pytest.raises(OnnxLrpError, match="box"):
        selections.detection_mask((1, 10, 8), box=10, cls=0)


SEGMENTER = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 2, H, W] x) => (float[N, 3, H, W] y) {
    h = Conv<pads = [1, 1, 1, 1]>(x, w1, b1)
    r = Relu(h)
    y = Conv(r, w2, b2)
}"""


@pytest.fixture
def segmenter(rng):
    model = onnx.parser.parse_model(SEGMENTER)
    for name, value in {"w1": rng.normal(size=(4, 2, 3, 3)), "b1": rng.normal(size=4) * 0.1,
                        "w2": rng.normal(size=(3, 4, 1, 1)), "b2": rng.normal(size=3) * 0.1}.items():
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    return model


def test_a_segmenter_with_free_sizes_explains_regions_at_any_size(segmenter, rng):
    ex = Explainer(segmenter, composite="epsilon")
    for size in (6, 9):
        x = rng.normal(size=(1, 2, size, size)).astype(np.float32)
        res = ex.explain(x, target=2, region=(1, 1, 4, 5))
        m = ex.output_mask(x, target=2, region=(1, 1, 4, 5))
        custom = ex.explain(x, mode="custom", output_relevance=m * res.outputs[0])
        np.testing.assert_allclose(res.relevance, custom.relevance, rtol=1e-5, atol=1e-7)
        assert res.relevance.shape == x.shape and np.abs(res.relevance).sum() > 0
    assert {k[3] for k in ex._compiled if k[3]} == {(("x", (2, 6, 6)),), (("x", (2, 9, 9)),)}


def test_class_modes_on_a_spatial_output_say_what_to_do(segmenter, rng):
    with pytest.raises(OnnxLrpError, match="region="):
        Explainer(segmenter).explain(rng.normal(size=(1, 2, 5, 5)).astype(np.float32), target=1)


def test_command_line_region_and_mask(segmenter, rng, tmp_path):
    from PIL import Image
    path = tmp_path / "seg.onnx"
    onnx.save(segmenter, path)
    np.save(tmp_path / "x.npy", rng.normal(size=(2, 7, 7)).astype(np.float32))
    assert main(["explain", str(path), str(tmp_path / "x.npy"), "--target", "1", "--region", "0,0,3,3",
                 "--out", str(tmp_path / "a"), "--no-pictures"]) == 0
    Image.fromarray(np.pad(np.full((3, 3), 255, np.uint8), ((0, 4), (0, 4)))).save(tmp_path / "m.png")
    assert main(["explain", str(path), str(tmp_path / "x.npy"), "--target", "1", "--mask", str(tmp_path / "m.png"),
                 "--out", str(tmp_path / "b"), "--no-pictures"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "a" / "x.relevance.npy"), np.load(tmp_path / "b" / "x.relevance.npy"),
                               rtol=1e-6)
    assert main(["explain", str(path), str(tmp_path / "x.npy"), "--region", "0,0,3", "--out", str(tmp_path / "c")]) == 2


def test_command_line_direction_on_an_embedding(tmp_path, rng):
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 4] x) => (float[N, 3] y) { h = MatMul(x, w) y = Relu(h) }""")
    model.graph.initializer.append(numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w"))
    path = tmp_path / "emb.onnx"
    onnx.save(model, path)
    x = rng.normal(size=4).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = np.array([1.0, -2.0, 0.5], np.float32)
    np.save(tmp_path / "r.npy", r)
    assert main(["explain", str(path), str(tmp_path / "x.npy"), "--direction", str(tmp_path / "r.npy"),
                 "--composite", "lrp0", "--out", str(tmp_path / "o")]) == 0
    got = np.load(tmp_path / "o" / "x.relevance.npy")
    y = np.maximum(x @ model_weight(model), 0)
    np.testing.assert_allclose(got.sum(), (y * r).sum(), rtol=1e-5)   # LRP-0, bias-free: conserved


def model_weight(model):
    return numpy_helper.to_array(model.graph.initializer[0])


def test_concepts_command(tmp_path, models_dir):
    out = tmp_path / "c"
    assert main(["concepts", str(models_dir / "tiny_vgg.onnx"), str(models_dir / "example.png"), "--layer",
                 "conv_13", "--top", "3", "--out", str(out)]) == 0
    import json
    table = json.loads((out / "example.concepts.json").read_text())
    assert len(table["concepts"]) == 3 and (out / "example.concepts.png").exists()
    assert np.load(out / "example.concepts.npy").shape == (3, 3, 32, 32)
    atlas = tmp_path / "atlas"
    assert main(["concepts", str(models_dir / "tiny_vgg.onnx"), str(models_dir / "example.png"), "--layer",
                 "conv_13", "--references", "1", "--out", str(atlas), "--quiet"]) == 0
    page = (atlas / "index.html").read_text()
    assert "channel 0" in page and "data:image/png;base64" in page and "http" not in page
    before = (atlas / "relevance" / "example.npy").stat().st_mtime_ns
    assert main(["concepts", str(models_dir / "tiny_vgg.onnx"), str(models_dir / "example.png"), "--layer",
                 "conv_13", "--references", "1", "--out", str(atlas), "--quiet"]) == 0
    assert (atlas / "relevance" / "example.npy").stat().st_mtime_ns == before   # resumed, not recomputed
