"""Full-size torchvision architectures (random weights, no download) via torch.onnx, for the
held-out-style check:
    ONNXLRP_CORPUS=/tmp/zoo python tools/zoo/torchvision_models.py [NAME...]   (torch + torchvision)
    ONNXLRP_CORPUS=/tmp/zoo python -m pytest tests/test_corpus.py             (onnxlrp)
"""
from __future__ import annotations

import os
import sys

import torch
import torch.library

try:
    import torchvision
except RuntimeError:  # a torchvision wheel built for another torch: its detection ops cannot register,
    real = torch.library.register_fake  # and the classification models do not need them
    torch.library.register_fake = lambda *args, **kwargs: (lambda fn: fn)
    for module in [m for m in sys.modules if m.startswith("torchvision")]:
        del sys.modules[module]
    import torchvision
    torch.library.register_fake = real

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "corpus"))
from manifest import path_for, record  # noqa: E402

# (name, input size, pure ReLU/MaxPool/AvgPool with foldable BatchNorm, exporter)
MODELS = [
    ("alexnet", 224, True, "torchscript"), ("vgg11_bn", 224, True, "torchscript"),
    ("resnet18", 64, True, "dynamo"), ("resnet50", 64, True, "torchscript"),
    ("squeezenet1_1", 64, True, "torchscript"), ("googlenet", 64, True, "torchscript"),
    ("inception_v3", 80, True, "torchscript"), ("densenet121", 64, False, "torchscript"),
    ("mobilenet_v2", 64, False, "torchscript"), ("mobilenet_v3_small", 64, False, "dynamo"),
    ("shufflenet_v2_x0_5", 64, True, "torchscript"), ("efficientnet_b0", 64, False, "torchscript"),
    ("mnasnet0_5", 64, True, "torchscript"), ("regnet_y_400mf", 64, False, "torchscript"),
    ("resnext50_32x4d", 64, True, "dynamo"), ("wide_resnet50_2", 64, True, "torchscript"),
]


def randomise_bn(model, seed):
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def main():
    only = set(sys.argv[1:])
    for i, (name, size, relu_only, exporter) in enumerate(MODELS):
        if only and name not in only:
            continue
        kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
        model = randomise_bn(getattr(torchvision.models, name)(weights=None, num_classes=10, **kwargs), i)
        x = torch.randn(1, 3, size, size)
        path = path_for(f"torchvision_{name}.onnx")
        if exporter == "dynamo":
            torch.onnx.export(model, (x,), path, dynamo=True, opset_version=18, input_names=["image"],
                              dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, external_data=False)
        else:
            torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["image"],
                              dynamic_axes={"image": {0: "batch"}})
        record(path, f"torch.onnx ({'dynamo' if exporter == 'dynamo' else 'TorchScript'}, torchvision)", name,
               [1, 3, size, size], relu_only)


if __name__ == "__main__":
    main()
