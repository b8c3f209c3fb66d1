"""Selections on outputs that are not [batch, classes], and CRP conditions, against Zennit's attr_output
(R_out = output * mask) on small torch models exported to ONNX (skipped without torch and zennit)."""
from __future__ import annotations

import copy
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
parity = pytest.importorskip("test_zennit_parity")   # skips without zennit; puts the torchvision stand-in in place
zc, Gradient = parity.zc, parity.Gradient

import onnx  # noqa: E402

from onnxlrp import Explainer, composites  # noqa: E402

pytestmark = pytest.mark.zennit
nn = torch.nn


class Segmenter(nn.Module):
    """Encoder, then a ConvTranspose or a nearest Resize decoder: [N, 4, H, W] class scores."""

    def __init__(self, decoder: str):
        super().__init__()
        self.encode = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        self.decode = (nn.ConvTranspose2d(8, 4, 2, 2) if decoder == "transpose" else
                       nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(8, 4, 3, padding=1)))

    def forward(self, x):
        return self.decode(self.encode(x))


class YoloHead(nn.Module):
    """A YOLO-style head: per cell, A anchors of (4 box, 1 objectness, C classes), reshaped and permuted to
    [N, boxes, 5 + C] (boxes_first) or laid out [N, 4 + C, boxes] (attributes_first)."""

    def __init__(self, layout: str, anchors=2, classes=3):
        super().__init__()
        self.layout, self.anchors, self.classes = layout, anchors, classes
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        width = anchors * (5 + classes) if layout == "boxes_first" else 4 + classes
        self.head = nn.Conv2d(8, width, 1)

    def forward(self, x):
        y = self.head(self.features(x))
        n, _, h, w = y.shape
        if self.layout == "boxes_first":
            y = y.view(n, self.anchors, 5 + self.classes, h, w).permute(0, 1, 3, 4, 2)
            return y.reshape(n, self.anchors * h * w, 5 + self.classes)
        return y.view(n, 4 + self.classes, h * w)


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5))

    def forward(self, x):
        return self.net(x)


class FullyConvolutional(nn.Module):
    """A Caffe2-era classifier: global pooling then a 1x1 convolution, logits [N, C, 1, 1]."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 6, 1))

    def forward(self, x):
        return self.net(x)


def _export(model, x, dynamic_spatial=False):
    buffer = io.BytesIO()
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_spatial else {0: "batch"}
    out_axes = {0: "batch", 2: "oh", 3: "ow"} if dynamic_spatial else {0: "batch"}
    torch.onnx.export(model, x, buffer, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": axes, "y": out_axes}, training=torch.onnx.TrainingMode.EVAL)
    return onnx.load_from_string(buffer.getvalue())


def _zennit(model, composite, x, mask, hooks=()):
    """Zennit's relevance with attr_output = output * mask; hooks: (module of the copy, forward hook)."""
    model = copy.deepcopy(model).double()
    for module_of, hook in hooks:
        module_of(model).register_forward_hook(hook)
    start = torch.as_tensor(np.array(mask), dtype=torch.float64)
    with Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(x.double(), lambda out: out * start)
    return relevance.numpy()


def _error(got, want):
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


PAIRS = {"epsilon_plus_flat": (zc.EpsilonPlusFlat, composites.EpsilonPlusFlat),
         "epsilon_gamma_box": (lambda: zc.EpsilonGammaBox(low=-3.0, high=3.0),
                               lambda: composites.EpsilonGammaBox(low=-3.0, high=3.0))}


def _seeded(model):
    torch.manual_seed(0)
    return model.eval()


@pytest.mark.parametrize("composite", list(PAIRS))
@pytest.mark.parametrize("decoder", ["transpose", "resize"])
def test_region_of_a_segmentation_at_two_input_sizes(decoder, composite):
    model = _seeded(Segmenter(decoder))
    onnx_model = _export(model, torch.randn(1, 3, 16, 16), dynamic_spatial=True)
    ex = Explainer(onnx_model, composite=PAIRS[composite][1]())
    for size in (16, 24):
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        region = (2, 3, size - 4, size - 2)
        res = ex.explain(x.numpy(), target=[1, 3], region=region)
        mask = ex.output_mask(x.numpy(), target=[1, 3], region=region)
        assert mask.shape == (2, 4, size, size) and mask[0, 1, 2, 3] == 1 and mask[0, 0].sum() == 0
        want = _zennit(model, PAIRS[composite][0](), x, mask)
        assert _error(res.relevance, want) < 1e-4


def test_mask_png_of_a_segmentation(tmp_path):
    from PIL import Image
    model = _seeded(Segmenter("transpose"))
    onnx_model = _export(model, torch.randn(1, 3, 16, 16))
    picture = np.zeros((8, 8), np.uint8)
    picture[2:6, 1:4] = 255     # half the output's size: resized to 16 x 16
    Image.fromarray(picture).save(tmp_path / "mask.png")
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    ex = Explainer(onnx_model)
    res = ex.explain(x.numpy(), target=2, mask=tmp_path / "mask.png")
    mask = np.zeros((1, 4, 16, 16), np.float32)
    mask[0, 2, 4:12, 2:8] = 1
    np.testing.assert_array_equal(ex.output_mask(x.numpy(), target=2, mask=tmp_path / "mask.png"), mask)
    assert _error(res.relevance, _zennit(model, zc.EpsilonPlusFlat(), x, mask)) < 1e-4


@pytest.mark.parametrize("layout", ["boxes_first", "attributes_first"])
def test_one_detection_of_a_yolo_style_head(layout):
    model = _seeded(YoloHead(layout))
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    ex = Explainer(_export(model, x))
    res = ex.explain(x.numpy(), target=[2, 0], box=[5, 11])
    mask = ex.output_mask(x.numpy(), target=[2, 0], box=[5, 11])
    offset = 5 if layout == "boxes_first" else 4
    if layout == "boxes_first":
        assert mask[0, 5, offset + 2] == 1 and mask[1, 11, offset] == 1 and mask.sum() == 2
    else:
        assert mask[0, offset + 2, 5] == 1 and mask[1, offset, 11] == 1 and mask.sum() == 2
    assert _error(res.relevance, _zennit(model, zc.EpsilonPlusFlat(), x, mask)) < 1e-4


def test_regression_output_and_direction():
    model = _seeded(Regressor())
    x = torch.randn(3, 10, generator=torch.Generator().manual_seed(5))
    ex = Explainer(_export(model, x), composite="epsilon")
    one = ex.explain(x.numpy(), target=3)
    mask = np.zeros((3, 5), np.float32)
    mask[:, 3] = 1
    want = _zennit(model, _uniform_epsilon(), x, mask)
    assert _error(one.relevance, want) < 1e-4
    r = np.random.default_rng(0).normal(size=5).astype(np.float32)
    along = ex.explain(x.numpy(), direction=r)
    assert _error(along.relevance, _zennit(model, _uniform_epsilon(), x, np.broadcast_to(r, (3, 5)))) < 1e-4


def _uniform_epsilon():
    from zennit.rules import Epsilon
    from zennit.types import Linear
    return zc.LayerMapComposite([(Linear, Epsilon(epsilon=1e-6))])


@pytest.mark.parametrize("composite", list(PAIRS))
def test_fully_convolutional_logits_are_classifier_logits(composite):
    model = _seeded(FullyConvolutional())
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(6))
    ex = Explainer(_export(model, x), composite=PAIRS[composite][1]())
    res = ex.explain(x.numpy(), target=[4, 1])
    mask = np.zeros((2, 6, 1, 1), np.float32)
    mask[0, 4], mask[1, 1] = 1, 1
    assert _error(res.relevance, _zennit(model, PAIRS[composite][0](), x, mask)) < 1e-4
    top = ex.explain(x.numpy(), top_k=2)
    assert top.relevance.shape == (2, 2, 3, 12, 12)


def _mask_hook(channels: list[int]):
    """Zennit with the relevance at a module's output masked to `channels` (what a CRP condition does)."""
    def hook(module, inputs, output):
        mask = torch.zeros(output.shape[1], dtype=output.dtype)
        mask[channels] = 1
        output.register_hook(lambda grad: grad * mask.view(1, -1, *([1] * (output.dim() - 2))))
    return hook


@pytest.mark.parametrize("composite", list(PAIRS))
def test_conditional_heatmap_equals_zennit_with_the_layer_masked(composite):
    model = _seeded(FullyConvolutional())
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(7))
    onnx_model = _export(model, x)
    conv = [n.name for n in onnx_model.graph.node if n.op_type == "Conv"][1]   # the second convolution
    ex = Explainer(onnx_model, composite=PAIRS[composite][1]())
    res = ex.explain(x.numpy(), target=[4, 1], condition={conv: [2, 5]})
    mask = np.zeros((2, 6, 1, 1), np.float32)
    mask[0, 4], mask[1, 1] = 1, 1
    want = _zennit(model, PAIRS[composite][0](), x, mask, hooks=[(lambda m: m.net[2], _mask_hook([2, 5]))])
    assert _error(res.relevance, want) < 1e-4
