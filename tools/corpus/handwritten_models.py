"""Corpus models written with onnx.helper: Caffe2-era graphs (IR 3 with the initialisers listed as
graph inputs, opsets 7-8, attribute-form Pad/Slice/Upsample, Caffe's mean subtraction and Scale
layers as Sub/Mul/Add), and the newest opset with several inputs, several outputs and external data.
Run with onnx installed:  python tools/corpus/handwritten_models.py
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from manifest import CORPUS, path_for, record

EXPORTER = "onnx.helper (hand-written)"
rng = np.random.default_rng(0)


class Graph:
    def __init__(self):
        self.nodes, self.inits = [], []

    def const(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def conv_weights(self, name, cout, cin, k):
        w = rng.normal(0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k)).astype(np.float32)
        return self.const(f"{name}_w", w), self.const(f"{name}_b", rng.normal(0, 0.1, cout).astype(np.float32))

    def node(self, op, inputs, output, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def conv_relu(self, name, x, cout, cin, k=3, pad=1, stride=1):
        w, b = self.conv_weights(name, cout, cin, k)
        c = self.node("Conv", [x, w, b], name, kernel_shape=[k, k], pads=[pad] * 4, strides=[stride] * 2)
        return self.node("Relu", [c], f"{name}_relu")


def save(g, name, inputs, outputs, opset, ir_version, inits_as_inputs=False, external=False):
    graph_inputs = list(inputs)
    if inits_as_inputs:  # IR 3: every initialiser is also a graph input
        graph_inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.inits]
    graph = helper.make_graph(g.nodes, name.split(".")[0], graph_inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnxlrp-corpus")
    model.ir_version = ir_version
    path = path_for(name)
    if external:
        data = name.replace(".onnx", ".data")
        if os.path.exists(os.path.join(CORPUS, data)):
            os.remove(os.path.join(CORPUS, data))
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                        size_threshold=1024)
    else:
        onnx.save_model(model, path)
    return path


def caffe2_squeezenet():
    """Opset 7, IR 3, batch 1 baked in: fire modules, Dropout(ratio), GlobalAveragePool, Softmax."""
    g = Graph()
    x = g.conv_relu("conv1", "data", 8, 3, 3, pad=0, stride=2)
    x = g.node("MaxPool", [x], "pool1", kernel_shape=[3, 3], strides=[2, 2])
    for i, (cin, s, e) in enumerate([(8, 4, 8), (16, 4, 8)]):
        sq = g.conv_relu(f"fire{i}_squeeze", x, s, cin, 1, pad=0)
        a = g.conv_relu(f"fire{i}_e1", sq, e, s, 1, pad=0)
        b = g.conv_relu(f"fire{i}_e3", sq, e, s, 3, pad=1)
        x = g.node("Concat", [a, b], f"fire{i}_concat", axis=1)
    x = g.node("Dropout", [x], "drop", ratio=0.5)
    x = g.conv_relu("conv10", x, 10, 16, 1, pad=0)
    x = g.node("GlobalAveragePool", [x], "gap")
    x = g.node("Reshape", [x, g.const("flat_shape", np.array([1, 10], np.int64))], "flat")
    g.node("Softmax", [x], "prob")
    path = save(g, "caffe2_squeezenet_op7.onnx", [helper.make_tensor_value_info("data", TensorProto.FLOAT,
                                                                                [1, 3, 32, 32])],
                [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 10])], 7, 3, inits_as_inputs=True)
    record(path, EXPORTER, "SqueezeNet (Caffe2-era)", [1, 3, 32, 32], True,
           notes="IR 3, initialisers as graph inputs, batch 1 baked into the Reshape")


def caffe_vgg_ops():
    """Opset 8, IR 3: mean subtraction, Caffe Scale layer (Mul + Add), LRN, attribute-form Pad and
    Slice, Upsample, Sum of three tensors, Gather, Flatten, Gemm."""
    g = Graph()
    x = g.node("Sub", ["data", g.const("mean", rng.uniform(0.3, 0.6, (1, 3, 1, 1)).astype(np.float32))], "centred")
    x = g.node("Pad", [x], "padded", pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="constant", value=0.0)
    w, b = g.conv_weights("conv1", 8, 3, 3)
    x = g.node("Conv", [x, w, b], "conv1", kernel_shape=[3, 3])
    x = g.node("Mul", [x, g.const("scale1", rng.uniform(0.5, 1.5, (8, 1, 1)).astype(np.float32))], "scale1_mul")
    x = g.node("Add", [x, g.const("shift1", rng.normal(0, 0.1, (8, 1, 1)).astype(np.float32))], "scale1_add")
    x = g.node("Relu", [x], "relu1")
    x = g.node("LRN", [x], "norm1", size=3, alpha=1e-4, beta=0.75, bias=1.0)
    x = g.node("MaxPool", [x], "pool1", kernel_shape=[2, 2], strides=[2, 2])
    a = g.conv_relu("conv2", x, 8, 8)
    up = g.node("Upsample", [g.node("MaxPool", [a], "pool2", kernel_shape=[2, 2], strides=[2, 2])], "up2",
                mode="nearest", scales=[1.0, 1.0, 2.0, 2.0])
    x = g.node("Sum", [x, a, up], "sum3")
    x = g.node("Slice", [x], "crop", axes=[2, 3], starts=[1, 1], ends=[15, 15])
    x = g.node("Gather", [x, g.const("channels", np.array([0, 2, 4, 6, 1, 3], np.int64))], "pick", axis=1)
    x = g.node("AveragePool", [x], "pool3", kernel_shape=[2, 2], strides=[2, 2])
    x = g.node("Flatten", [x], "flat", axis=1)
    fc_w = g.const("fc_w", rng.normal(0, 0.05, (10, 6 * 7 * 7)).astype(np.float32))
    g.node("Gemm", [x, fc_w, g.const("fc_b", np.zeros(10, np.float32))], "logits", transB=1)
    path = save(g, "caffe_vgg_ops_op8.onnx", [helper.make_tensor_value_info("data", TensorProto.FLOAT,
                                                                            [1, 3, 32, 32])],
                [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], 8, 3, inits_as_inputs=True)
    record(path, EXPORTER, "VGG (Caffe-era ops)", [1, 3, 32, 32], False,
           notes="mean shift before a padded conv and LRN pass relevance (docs/rules.md)")


def multi_io_newest(opset):
    """Newest opset: an image and a feature vector in; class logits and an auxiliary score out;
    weights in an external-data file."""
    g = Graph()
    x = g.conv_relu("conv1", "image", 16, 3, 3)
    x = g.node("MaxPool", [x], "pool1", kernel_shape=[2, 2], strides=[2, 2])
    x = g.conv_relu("conv2", x, 16, 16, 3)
    x = g.node("GlobalAveragePool", [x], "gap")
    x = g.node("Flatten", [x], "flat", axis=1)
    f = g.node("Relu", [g.node("Gemm", ["features", g.const("fw", rng.normal(0, 0.3, (8, 6)).astype(np.float32)),
                                        g.const("fb", rng.normal(0, 0.1, 8).astype(np.float32))], "fproj",
                                transB=1)], "frelu")
    h = g.node("Concat", [x, f], "joint", axis=1)
    g.node("Gemm", [h, g.const("cw", rng.normal(0, 0.2, (24, 5)).astype(np.float32))], "class_logits")
    g.node("Gemm", [h, g.const("aw", rng.normal(0, 0.2, (1, 24)).astype(np.float32))], "aux_score", transB=1)
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 16, 16]),
              helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 6])]
    outputs = [helper.make_tensor_value_info("aux_score", TensorProto.FLOAT, ["batch", 1]),
               helper.make_tensor_value_info("class_logits", TensorProto.FLOAT, ["batch", 5])]
    name = f"helper_multi_io_op{opset}.onnx"
    path = save(g, name, inputs, outputs, opset, helper.find_min_ir_version_for([helper.make_opsetid("", opset)]),
                external=True)
    record(path, EXPORTER, "two-input two-output", [1, 3, 16, 16], True,
           notes="explain output 'class_logits'; relevance for both inputs",
           inputs={"image": [1, 3, 16, 16], "features": [1, 6]}, output="class_logits")


def main():
    caffe2_squeezenet()
    caffe_vgg_ops()
    multi_io_newest(25)


if __name__ == "__main__":
    main()
