"""Corpus models from PyTorch: TorchScript exporter at opsets 9-20 and the dynamo exporter.

Run with torch (and onnxscript for the dynamo exports) installed:  python tools/corpus/torch_models.py
Seeded random weights; BatchNorm statistics randomised so that folding them is not a no-op.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from manifest import path_for, record

EXPORTER = "torch.onnx (TorchScript)"
DYNAMO = "torch.onnx (dynamo)"


def cbr(cin, cout, k=3, stride=1, groups=1, act=nn.ReLU):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), act())


class VGG(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(cbr(3, 8), nn.MaxPool2d(2), cbr(8, 16), cbr(16, 16), nn.MaxPool2d(2),
                                      cbr(16, 16), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a, self.b = cbr(cin, cout, stride=stride), nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                                                      nn.BatchNorm2d(cout))
        self.skip = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.b(self.a(x)) + self.skip(x))


class Bottleneck(nn.Module):
    def __init__(self, cin, mid, cout, stride):
        super().__init__()
        self.body = nn.Sequential(cbr(cin, mid, 1), cbr(mid, mid, 3, stride), nn.Conv2d(mid, cout, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.body(x) + self.skip(x))


class ResNet(nn.Module):
    def __init__(self, bottleneck=False, classes=10):
        super().__init__()
        self.stem = nn.Sequential(cbr(3, 8), nn.MaxPool2d(3, 2, 1))
        if bottleneck:
            self.layers = nn.Sequential(Bottleneck(8, 4, 16, 1), Bottleneck(16, 8, 32, 2))
        else:
            self.layers = nn.Sequential(Basic(8, 8, 1), Basic(8, 16, 2))
        self.fc = nn.Linear(32 if bottleneck else 16, classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 2 * growth, 1, bias=False),
                                  nn.BatchNorm2d(2 * growth), nn.ReLU(), nn.Conv2d(2 * growth, growth, 3, 1, 1,
                                                                                   bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


class DenseNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.block1 = nn.Sequential(DenseLayer(8, 4), DenseLayer(12, 4))
        self.trans = nn.Sequential(nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1, bias=False), nn.AvgPool2d(2))
        self.block2 = nn.Sequential(DenseLayer(8, 4), DenseLayer(12, 4))
        self.norm = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.norm(self.block2(self.trans(self.block1(self.stem(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(x), 1), 1))


class Inception(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.b1 = cbr(cin, 4, 1)
        self.b3 = nn.Sequential(cbr(cin, 4, 1), cbr(4, 6, 3))
        self.b5 = nn.Sequential(cbr(cin, 2, 1), cbr(2, 4, 3), cbr(4, 4, 3))
        self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), cbr(cin, 2, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.pool(x)], 1)


class InceptionNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.net = nn.Sequential(cbr(3, 8, 3, 2), Inception(8), nn.MaxPool2d(3, 2, ceil_mode=True), Inception(16))
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(F.dropout(torch.flatten(F.adaptive_avg_pool2d(self.net(x), 1), 1), training=False))


class Fire(nn.Module):
    def __init__(self, cin, squeeze, expand):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.e1, self.e3 = nn.Conv2d(squeeze, expand, 1), nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x):
        s = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.e1(s)), F.relu(self.e3(s))], 1)


class SqueezeNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
                                      Fire(8, 4, 8), Fire(16, 4, 8), nn.MaxPool2d(3, 2, ceil_mode=True), Fire(16, 6, 12))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(24, classes, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class SqueezeExcite(nn.Module):
    def __init__(self, c, gate=nn.Hardsigmoid):
        super().__init__()
        self.fc1, self.fc2, self.gate = nn.Conv2d(c, max(c // 4, 2), 1), nn.Conv2d(max(c // 4, 2), c, 1), gate()

    def forward(self, x):
        return x * self.gate(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand, act=nn.ReLU6, se=False):
        super().__init__()
        mid = cin * expand
        layers = [cbr(cin, mid, 1, act=act), cbr(mid, mid, 3, stride, groups=mid, act=act)]
        if se:
            layers.append(SqueezeExcite(mid))
        layers += [nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNet(nn.Module):
    def __init__(self, v3=False, classes=10):
        super().__init__()
        act = nn.Hardswish if v3 else nn.ReLU6
        self.features = nn.Sequential(cbr(3, 8, 3, 2, act=act), InvertedResidual(8, 8, 1, 2, act, v3),
                                      InvertedResidual(8, 12, 2, 3, act, v3), InvertedResidual(12, 12, 1, 3, act, v3),
                                      cbr(12, 24, 1, act=act))
        self.head = nn.Sequential(nn.Linear(24, 32), act(), nn.Dropout(0.2), nn.Linear(32, classes))

    def forward(self, x):
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def channel_shuffle(x, groups):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, c):
        super().__init__()
        half = c // 2
        self.branch = nn.Sequential(cbr(half, half, 1), nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False),
                                    nn.BatchNorm2d(half), cbr(half, half, 1))

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([a, self.branch(b)], 1), 2)


class ShuffleNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.net = nn.Sequential(cbr(3, 16, 3, 2), nn.MaxPool2d(3, 2, 1), ShuffleUnit(16), ShuffleUnit(16))
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(self.net(x).mean([2, 3]))


class OpsZoo(nn.Module):
    """Activations and resampling ops the corpus must cover, in one small CNN."""

    def __init__(self, classes=10):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(8, 8, 3, 2, 1)
        self.prelu = nn.PReLU(8)
        self.up = nn.ConvTranspose2d(8, 8, 2, 2)
        self.c3 = nn.Conv2d(16, 8, 3, padding=1)
        self.lrn = nn.LocalResponseNorm(3)
        self.fc = nn.Linear(8 * 2, classes)

    def forward(self, x):
        a = F.leaky_relu(self.c1(F.pad(x, (1, 1, 1, 1), mode="reflect")[:, :, 1:-1, 1:-1]), 0.1)
        b = F.gelu(self.prelu(self.c2(a)))
        b = F.silu(F.interpolate(b, scale_factor=2, mode="nearest")) + F.mish(self.up(b))
        c = F.elu(self.c3(torch.cat([a, b], 1)))
        c = self.lrn(F.hardsigmoid(c) * c)
        c = F.interpolate(c, size=(8, 8), mode="bilinear", align_corners=False)
        c = torch.sigmoid(c) + F.relu6(c) + torch.tanh(c)
        pooled = torch.cat([c.mean([2, 3]), c.sum([2, 3]) / 64.0], 1)
        return self.fc(pooled[:, torch.tensor([0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15])])


class ReluOps(nn.Module):
    """Pure-ReLU network through Pad, Slice, Gather, Split, Resize, ReduceMean, ConvTranspose and Sum:
    LRP-0 must still equal gradient x input."""

    def __init__(self, classes=10):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, 2, 1)
        self.up = nn.ConvTranspose2d(8, 4, 3, 2, 1, output_padding=1)
        self.fc = nn.Linear(12, classes)

    def forward(self, x):
        a = F.relu(self.c1(F.pad(x, (1, 1, 1, 1))))
        b = F.relu(self.c2(a[:, :, ::1, 1:]))
        u1 = F.interpolate(b, scale_factor=2, mode="nearest")[:, :, :, :31]
        u2 = F.interpolate(b, size=(32, 31), mode="bilinear", align_corners=True)
        s = F.relu(u1 + u2 + self.up(b)[:, :, :, :31].repeat(1, 2, 1, 1))
        left, right = torch.split(s, [3, 5], dim=1)
        pooled = torch.cat([left.mean([2, 3]), right.mean([2, 3]),
                            s[:, torch.tensor([1, 1, 6, 0])].mean([2, 3])], 1)
        return self.fc(pooled)


def randomise(model: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def export(model, name, opset, family, relu_only, shape=(1, 3, 32, 32), dynamo=False, notes=""):
    path = path_for(name)
    x = torch.randn(*shape)
    if dynamo:
        torch.onnx.export(model, (x,), path, dynamo=True, opset_version=opset, input_names=["image"],
                          output_names=["logits"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                          external_data=False)
    else:
        torch.onnx.export(model, (x,), path, dynamo=False, opset_version=opset, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    record(path, DYNAMO if dynamo else EXPORTER, family, list(shape), relu_only, notes)


def main():
    torch.manual_seed(0)
    export(randomise(VGG(), 1), "torch_vgg_op9.onnx", 9, "VGG", True)
    export(randomise(ResNet(), 2), "torch_resnet_basic_op11.onnx", 11, "ResNet (basic)", True)
    export(randomise(ResNet(bottleneck=True), 3), "torch_resnet_bottleneck_op13.onnx", 13, "ResNet (bottleneck)", True)
    export(randomise(DenseNet(), 4), "torch_densenet_op17.onnx", 17, "DenseNet", False,
           notes="pre-activation BatchNorm after Concat cannot fold: Pass")
    export(randomise(InceptionNet(), 5), "torch_inception_op12.onnx", 12, "Inception", True)
    export(randomise(SqueezeNet(), 6), "torch_squeezenet_op10.onnx", 10, "SqueezeNet", True)
    export(randomise(MobileNet(), 7), "torch_mobilenet_v2_op13.onnx", 13, "MobileNet-v2", False, notes="ReLU6")
    export(randomise(MobileNet(v3=True), 8), "torch_mobilenet_v3_op14.onnx", 14, "MobileNet-v3", False,
           notes="HardSwish, squeeze-excitation with HardSigmoid gate")
    export(randomise(ShuffleNet(), 9), "torch_shufflenet_op11.onnx", 11, "ShuffleNet", True)
    export(randomise(OpsZoo(), 10), "torch_ops_zoo_op16.onnx", 16, "ops zoo", False)
    export(randomise(OpsZoo(), 11), "torch_ops_zoo_op20.onnx", 20, "ops zoo", False, notes="Gelu op at opset 20")
    export(randomise(ReluOps(), 12), "torch_relu_routing_op13.onnx", 13, "routing ops", True)
    export(randomise(ResNet(bottleneck=True), 13), "torch_dynamo_resnet_op18.onnx", 18, "ResNet (bottleneck)", True,
           dynamo=True)
    export(randomise(MobileNet(v3=True), 14), "torch_dynamo_mobilenet_v3_op18.onnx", 18, "MobileNet-v3", False,
           dynamo=True)


if __name__ == "__main__":
    main()
