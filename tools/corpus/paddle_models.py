"""Corpus models from PaddlePaddle via paddle2onnx (Conv + separate bias Add, flatten through
Shape/Slice/Concat/Reshape).  Run where paddlepaddle and paddle2onnx are installed:
    python tools/corpus/paddle_models.py
"""
from __future__ import annotations

import glob
import os
import tempfile

import numpy as np
import paddle
import paddle2onnx
from paddle import nn
from paddle.nn import functional as F

from manifest import path_for, record

EXPORTER = "paddle2onnx (PaddlePaddle)"


class ResNetLike(nn.Layer):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2D(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2D(8)
        self.pool = nn.MaxPool2D(2, 2)
        self.a, self.b = nn.Conv2D(8, 8, 3, padding=1), nn.Conv2D(8, 8, 3, padding=1)
        self.down = nn.Conv2D(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.bn(self.stem(x))))
        x = F.relu(x + self.b(F.relu(self.a(x))))
        x = F.relu(self.down(x))
        return F.softmax(self.fc(paddle.flatten(x, 1)))


class MobileNetLike(nn.Layer):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2D(3, 8, 3, stride=2, padding=1, bias_attr=False)
        self.bn = nn.BatchNorm2D(8)
        self.dw = nn.Conv2D(8, 8, 3, padding=1, groups=8, bias_attr=False)
        self.bn2 = nn.BatchNorm2D(8)
        self.se1, self.se2 = nn.Conv2D(8, 4, 1), nn.Conv2D(4, 8, 1)
        self.pw = nn.Conv2D(8, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.hardswish(self.bn(self.stem(x)))
        y = F.relu6(self.bn2(self.dw(x)))
        s = F.hardsigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(y, 1)))))
        x = F.hardswish(self.pw(y * s))
        return self.fc(paddle.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def randomise(net, seed):
    paddle.seed(seed)
    rng = np.random.default_rng(seed)
    for layer in net.sublayers():
        if isinstance(layer, nn.BatchNorm2D):
            c = layer._mean.shape[0]
            layer._mean.set_value(rng.uniform(-0.2, 0.2, c).astype("float32"))
            layer._variance.set_value(rng.uniform(0.5, 1.5, c).astype("float32"))
            layer.weight.set_value(rng.uniform(0.5, 1.5, c).astype("float32"))
            layer.bias.set_value(rng.uniform(-0.2, 0.2, c).astype("float32"))
        elif isinstance(layer, (nn.Conv2D, nn.Linear)) and layer.bias is not None:
            layer.bias.set_value(rng.normal(0, 0.1, layer.bias.shape).astype("float32"))
    net.eval()
    return net


def export(net, name, opset, family, relu_only, shape=(1, 3, 32, 32), notes=""):
    spec = [paddle.static.InputSpec([None] + list(shape[1:]), "float32", "image")]
    with tempfile.TemporaryDirectory() as tmp:
        static = paddle.jit.to_static(net, input_spec=spec)
        paddle.jit.save(static, os.path.join(tmp, "model"))
        files = glob.glob(os.path.join(tmp, "model.*"))
        program = next(f for f in files if f.endswith((".json", ".pdmodel")))
        params = next(f for f in files if f.endswith(".pdiparams"))
        path = path_for(name)
        paddle2onnx.export(program, params, path, opset_version=opset)
    record(path, EXPORTER, family, list(shape), relu_only, notes)


def main():
    export(randomise(ResNetLike(), 1), "paddle_resnet_op9.onnx", 9, "ResNet (basic)", True)
    export(randomise(MobileNetLike(), 2), "paddle_mobilenet_v3_op13.onnx", 13, "MobileNet-v3", False)


if __name__ == "__main__":
    main()
