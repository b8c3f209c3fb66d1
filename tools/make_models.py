"""Build the small example models in models/ (seeded random weights; no framework needed).

    python tools/make_models.py          # rewrites models/*.onnx and models/example.png

tiny_vgg.onnx     Conv-BN-Relu-MaxPool x2, Reshape flatten with a baked batch of 1, Gemm head, Softmax
tiny_resnet.onnx  strided stem, a basic residual block, a projection block, GlobalAveragePool, MatMul+Add head
mlp.onnx          MatMul+Add / Relu / MatMul+Add / Softmax on 20 features
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MODELS = Path(__file__).resolve().parent.parent / "models"
OPSET = 17


class GraphMaker:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.k = 0

    def name(self, base):
        self.k += 1
        return f"{base}_{self.k}"

    def const(self, array, base="c"):
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, base=None, **attrs):
        out = self.name(base or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x, c_in, c_out, k=3, stride=1, pad=1, group=1, bias=True):
        fan_in = c_in // group * k * k
        w = self.rng.normal(0, np.sqrt(2.0 / fan_in), (c_out, c_in // group, k, k)).astype(np.float32)
        inputs = [x, self.const(w, "conv_w")]
        if bias:
            inputs.append(self.const(self.rng.normal(0, 0.05, c_out).astype(np.float32), "conv_b"))
        return self.node("Conv", inputs, "conv", kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4,
                         group=group)

    def bn(self, x, c):
        params = [self.rng.uniform(0.6, 1.4, c), self.rng.normal(0, 0.1, c), self.rng.normal(0, 0.1, c),
                  self.rng.uniform(0.5, 1.5, c)]
        names = [self.const(p.astype(np.float32), "bn") for p in params]
        return self.node("BatchNormalization", [x] + names, "bn", epsilon=1e-5)

    def dense_gemm(self, x, n_in, n_out):
        w = self.rng.normal(0, np.sqrt(2.0 / n_in), (n_out, n_in)).astype(np.float32)
        b = self.rng.normal(0, 0.05, n_out).astype(np.float32)
        return self.node("Gemm", [x, self.const(w, "fc_w"), self.const(b, "fc_b")], "fc", transB=1)

    def dense_matmul(self, x, n_in, n_out):
        w = self.rng.normal(0, np.sqrt(2.0 / n_in), (n_in, n_out)).astype(np.float32)
        b = self.rng.normal(0, 0.05, n_out).astype(np.float32)
        y = self.node("MatMul", [x, self.const(w, "fc_w")], "matmul")
        return self.node("Add", [y, self.const(b, "fc_b")], "bias")

    def model(self, graph_name, x_info, out_name, out_shape, last):
        self.nodes[-1].output[0] = out_name
        self.nodes[-1].name = out_name if self.nodes[-1].name == last else self.nodes[-1].name
        graph = helper.make_graph(self.nodes, graph_name, [x_info],
                                  [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnxlrp-tools")
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def tiny_vgg() -> onnx.ModelProto:
    g = GraphMaker(seed=1)
    x = "image"
    h = g.node("Relu", [g.bn(g.conv(x, 3, 8), 8)])
    h = g.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = g.node("Relu", [g.bn(g.conv(h, 8, 16), 16)])
    h = g.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = g.node("Reshape", [h, g.const(np.array([1, -1], np.int64), "shape")])
    h = g.node("Relu", [g.dense_gemm(h, 16 * 8 * 8, 32)])
    h = g.node("Dropout", [h])
    logits = g.dense_gemm(h, 32, 10)
    last = g.node("Softmax", [logits], axis=1)
    return g.model("tiny_vgg", helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 3, 32, 32]), "probabilities",
                   [1, 10], last)


def tiny_resnet() -> onnx.ModelProto:
    g = GraphMaker(seed=2)
    x = "image"
    stem = g.node("Relu", [g.bn(g.conv(x, 3, 8, stride=2, bias=False), 8)])
    h = g.node("Relu", [g.bn(g.conv(stem, 8, 8, bias=False), 8)])
    h = g.bn(g.conv(h, 8, 8, bias=False), 8)
    block1 = g.node("Relu", [g.node("Add", [h, stem])])
    h = g.node("Relu", [g.bn(g.conv(block1, 8, 16, stride=2, bias=False), 16)])
    h = g.bn(g.conv(h, 16, 16, bias=False), 16)
    shortcut = g.bn(g.conv(block1, 8, 16, k=1, stride=2, pad=0, bias=False), 16)
    block2 = g.node("Relu", [g.node("Add", [h, shortcut])])
    pooled = g.node("GlobalAveragePool", [block2])
    flat = g.node("Flatten", [pooled], axis=1)
    last = g.dense_matmul(flat, 16, 10)
    return g.model("tiny_resnet", helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 3, 32, 32]), "logits",
                   ["N", 10], last)


def small_vgg() -> onnx.ModelProto:
    """Wider than tiny_vgg (32-64 channels): enough channels per location for the convergence check."""
    g = GraphMaker(seed=5)
    h = "image"
    for c_in, c_out, pool in [(3, 32, False), (32, 32, True), (32, 64, False), (64, 64, True), (64, 64, True)]:
        h = g.node("Relu", [g.conv(h, c_in, c_out)])
        if pool:
            h = g.node("MaxPool", [h], kernel_shape=[2, 2], strides=[2, 2])
    h = g.node("Flatten", [h], axis=1)
    h = g.node("Relu", [g.dense_gemm(h, 64 * 4 * 4, 64)])
    last = g.dense_gemm(h, 64, 10)
    return g.model("small_vgg", helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32]), "logits",
                   ["N", 10], last)


def mlp() -> onnx.ModelProto:
    g = GraphMaker(seed=3)
    h = g.node("Relu", [g.dense_matmul("features", 20, 16)])
    logits = g.dense_matmul(h, 16, 3)
    last = g.node("Softmax", [logits], axis=-1)
    return g.model("mlp", helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 20]), "probabilities",
                   ["N", 3], last)


def example_image(path: Path) -> None:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64), (235, 230, 220))
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 10, 34, 36), fill=(200, 40, 40))
    draw.rectangle((36, 30, 58, 56), fill=(40, 60, 190))
    draw.line((4, 60, 60, 4), fill=(20, 20, 20), width=2)
    image.save(path)


def main() -> None:
    MODELS.mkdir(exist_ok=True)
    for name, build in [("tiny_vgg", tiny_vgg), ("tiny_resnet", tiny_resnet), ("small_vgg", small_vgg), ("mlp", mlp)]:
        onnx.save_model(build(), str(MODELS / f"{name}.onnx"))
        print(f"wrote models/{name}.onnx")
    example_image(MODELS / "example.png")
    np.save(MODELS / "example_features.npy", np.random.default_rng(4).normal(size=20).astype(np.float32))
    print("wrote models/example.png, models/example_features.npy")


if __name__ == "__main__":
    main()
