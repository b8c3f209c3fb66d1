"""onnxlrp against Zennit on small torch models exported to ONNX (skipped without torch and zennit).

Residual joins: the ONNX export sees `a + b`; the Zennit twin uses zennit.layer.Sum (what its
ResNet canonizer inserts) so that Zennit applies Norm there, as docs/rules.md does.
"""
import copy
import io
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
try:
    import importlib.util
    if importlib.util.find_spec("torchvision") is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent / "zennit_stub"))
    import zennit.composites as zc
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.layer import Sum
except Exception as exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"zennit is not importable: {exc}", allow_module_level=True)

import onnx  # noqa: E402

from onnxlrp import Explainer, composites  # noqa: E402

pytestmark = pytest.mark.zennit


class VGGish(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 12, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(3, stride=2, padding=1),
            torch.nn.Conv2d(12, 16, 3, padding=1, groups=4), torch.nn.ReLU(), torch.nn.AvgPool2d(2))
        self.classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 2 * 2, 20), torch.nn.ReLU(),
                                              torch.nn.Dropout(), torch.nn.Linear(20, 6))

    def forward(self, x):
        return self.classifier(self.features(x))


class Block(torch.nn.Module):
    def __init__(self, c_in, c_out, stride, zennit_sum):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(c_out)
        self.relu1 = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(c_out)
        self.relu2 = torch.nn.ReLU()
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = torch.nn.Sequential(torch.nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            torch.nn.BatchNorm2d(c_out))
        self.sum = Sum() if zennit_sum else None

    def forward(self, x):
        h = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        skip = x if self.down is None else self.down(x)
        joined = self.sum(torch.stack([h, skip], dim=-1)) if self.sum is not None else h + skip
        return self.relu2(joined)


class ResNetish(torch.nn.Module):
    def __init__(self, zennit_sum=False):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        self.layer1 = Block(8, 8, 1, zennit_sum)
        self.layer2 = Block(8, 16, 2, zennit_sum)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(16, 7)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layer2(self.layer1(self.stem(x)))), 1))


def _randomise_batchnorm(model, generator):
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5, generator=generator)
            module.bias.data.normal_(0, 0.2, generator=generator)
            module.running_mean.normal_(0, 0.2, generator=generator)
            module.running_var.uniform_(0.5, 1.5, generator=generator)


def _export(model, x):
    buffer = io.BytesIO()
    torch.onnx.export(model, x, buffer, dynamo=False, opset_version=17, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
                      training=torch.onnx.TrainingMode.EVAL, do_constant_folding=False)
    return onnx.load_from_string(buffer.getvalue())


def _zennit(model, composite, x, start):
    model = copy.deepcopy(model).double()
    with Gradient(model=model, composite=composite) as attributor:
        output, relevance = attributor(x.double(), lambda out: start(out))
    return relevance.numpy()


def _pairs(low, high):
    def canon():
        return [SequentialMergeBatchNorm()]
    return {
        "epsilon_plus_flat": (lambda: zc.EpsilonPlusFlat(canonizers=canon()), composites.EpsilonPlusFlat()),
        "epsilon_plus": (lambda: zc.EpsilonPlus(canonizers=canon()), composites.EpsilonPlus()),
        "epsilon_gamma_box": (lambda: zc.EpsilonGammaBox(low=low, high=high, canonizers=canon()),
                              composites.EpsilonGammaBox(low=low, high=high)),
        "epsilon_alpha2_beta1": (lambda: zc.EpsilonAlpha2Beta1(canonizers=canon()), composites.EpsilonAlpha2Beta1()),
        "epsilon_alpha2_beta1_flat": (lambda: zc.EpsilonAlpha2Beta1Flat(canonizers=canon()),
                                      composites.EpsilonAlpha2Beta1Flat()),
        "excitation_backprop": (lambda: zc.ExcitationBackprop(canonizers=canon()), composites.ExcitationBackprop()),
    }


def _models():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    vgg = VGGish().eval()
    _randomise_batchnorm(vgg, generator)
    resnet = ResNetish().eval()
    _randomise_batchnorm(resnet, generator)
    resnet_zennit = ResNetish(zennit_sum=True).eval()
    resnet_zennit.load_state_dict(resnet.state_dict())
    return {"vgg": (vgg, vgg, (3, 16, 16)), "resnet": (resnet, resnet_zennit, (3, 16, 16))}


MODELS = _models()


@pytest.mark.parametrize("mode", ["logit", "one"])
@pytest.mark.parametrize("composite", list(_pairs(-3.0, 3.0)))
@pytest.mark.parametrize("arch", list(MODELS))
def test_matches_zennit(arch, composite, mode):
    exported_model, zennit_model, shape = MODELS[arch]
    x = torch.randn((3,) + shape, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 2, 5])
    if mode == "one":
        # Open question (see README): with R = 1 at a logit near 0, Zennit's result departs from its own
        # logit-mode result / z by about 2 * eps / z (1.4e-4 at z = 0.0145), while onnxlrp's stays linear.
        # Explain the predicted classes here, whose logits are not near zero.
        target = exported_model(x).argmax(1)
    make_zennit, ours = _pairs(-3.0, 3.0)[composite]
    one_hot = torch.eye(exported_model(x).shape[1], dtype=torch.float64)[target]
    start = (lambda out: one_hot * out) if mode == "logit" else (lambda out: one_hot)
    want = _zennit(zennit_model, make_zennit(), x, start)
    onnx_model = _export(exported_model, x)
    got = Explainer(onnx_model, composite=ours).explain(x.numpy(), target=target.numpy(), mode=mode).relevance
    error = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert error < 1e-4, f"relative L2 error {error:.2e}"
