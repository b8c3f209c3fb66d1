"""Full-size paddle.vision architectures (random weights, no download) via paddle2onnx:
    ONNXLRP_CORPUS=/tmp/zoo python tools/zoo/paddle_vision.py [NAME...]   (paddlepaddle + paddle2onnx)
    ONNXLRP_CORPUS=/tmp/zoo python -m pytest tests/test_corpus.py        (onnxlrp)
"""
from __future__ import annotations

import glob
import os
import sys
import tempfile

import paddle
import paddle2onnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "corpus"))
from manifest import path_for, record  # noqa: E402

# (name, input size, pure ReLU/MaxPool/AvgPool with foldable BatchNorm, opset)
MODELS = [("resnet50", 64, True, 11), ("mobilenet_v3_small", 64, False, 13), ("shufflenet_v2_x0_5", 64, False, 13),
          ("densenet121", 64, False, 11), ("squeezenet1_1", 64, True, 9)]
# mobilenet_v1 is left out: with its random initialisation the logits are ~1e-17 (the signal vanishes)


def main():
    only = set(sys.argv[1:])
    paddle.seed(0)
    for name, size, relu_only, opset in MODELS:
        if only and name not in only:
            continue
        net = getattr(paddle.vision.models, name)(pretrained=False, num_classes=10)
        net.eval()
        spec = [paddle.static.InputSpec([None, 3, size, size], "float32", "image")]
        with tempfile.TemporaryDirectory() as tmp:
            paddle.jit.save(paddle.jit.to_static(net, input_spec=spec), os.path.join(tmp, "model"))
            files = glob.glob(os.path.join(tmp, "model.*"))
            program = next(f for f in files if f.endswith((".json", ".pdmodel")))
            params = next(f for f in files if f.endswith(".pdiparams"))
            path = path_for(f"paddle_{name}.onnx")
            paddle2onnx.export(program, params, path, opset_version=opset)
        record(path, "paddle2onnx (paddle.vision)", name, [1, 3, size, size], relu_only)


if __name__ == "__main__":
    main()
