"""Pictures: overlay colours, grid layout, plots written."""
import numpy as np
import pytest

from onnxlrp.heatmap import heatmap_image
from onnxlrp.pictures import grid, input_image, overlay, plot_curves, plot_layers


def test_overlay_shows_relevance_in_colour_and_the_image_elsewhere():
    sample = np.zeros((3, 4, 4), np.float32)
    sample[:, 0, 0] = 1.0                         # one bright pixel
    relevance = np.zeros((3, 4, 4), np.float32)
    relevance[:, 3, 3] = 1.0                      # positive relevance: red
    relevance[:, 3, 0] = -1.0                     # negative: blue
    picture = np.asarray(overlay(relevance, sample))
    factor = picture.shape[0] // 4
    red, blue, bright, dark = (picture[3 * factor, 3 * factor], picture[3 * factor, 0], picture[0, 0],
                               picture[factor, factor])
    assert red[0] > 200 and red[2] < 80
    assert blue[2] > 200 and blue[0] < 80
    assert bright[0] == bright[1] == bright[2] and bright[0] > dark[0]   # grey image where no relevance
    assert input_image(sample).max() == 1.0


def test_grid_places_tiles_with_labels():
    tiles = [[heatmap_image(np.ones((1, 8, 8))) for _ in range(3)] for _ in range(2)]
    sheet = grid(tiles, column_labels=["a", "b", "c"], row_labels=["x", "y"])
    w, h = tiles[0][0].size
    assert sheet.size[0] >= 3 * w and sheet.size[1] >= 2 * h


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    assert plot_curves(tmp_path / "c.png", [("a", [0, 1], [1, 0], "-")], "x", "y", "t")
    assert plot_layers(tmp_path / "l.png", ["l1", "l2"], {"s": np.array([0.1, 0.9])}, "y", "t")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "l.png").stat().st_size > 0


def test_heatmap_and_overlay_of_one_input_have_one_size(tmp_path):
    for shape in [(1, 32, 32), (3, 28, 20), (1, 300, 200)]:
        relevance = np.random.default_rng(0).normal(size=shape)
        heatmap = heatmap_image(relevance)
        assert overlay(relevance, np.ones(shape)).size == heatmap.size
        assert max(heatmap.size) >= 224
