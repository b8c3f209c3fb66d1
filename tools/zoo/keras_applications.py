"""Full-size Keras application architectures (random weights, no download) via tf2onnx, for the
held-out-style check:
    ONNXLRP_CORPUS=/tmp/zoo python tools/zoo/keras_applications.py      (tensorflow + tf2onnx)
    ONNXLRP_CORPUS=/tmp/zoo python -m pytest tests/test_corpus.py        (onnxlrp)
"""
from __future__ import annotations

import os
import sys

import numpy as np
import tensorflow as tf
import tf2onnx
from tensorflow import keras

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "corpus"))
from manifest import path_for, record  # noqa: E402

# (name, constructor, input size, pure ReLU/MaxPool with foldable BatchNorm)
APPLICATIONS = [
    ("VGG16", keras.applications.VGG16, 64, True),
    ("ResNet50", keras.applications.ResNet50, 64, True),
    ("ResNet50V2", keras.applications.ResNet50V2, 64, False),
    ("MobileNetV2", keras.applications.MobileNetV2, 96, False),
    ("MobileNetV3Small", keras.applications.MobileNetV3Small, 96, False),
    ("EfficientNetB0", keras.applications.EfficientNetB0, 64, False),
    ("DenseNet121", keras.applications.DenseNet121, 64, False),
    ("InceptionV3", keras.applications.InceptionV3, 96, False),
    ("Xception", keras.applications.Xception, 96, False),
]


def randomise_bn(model, seed):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            weights = layer.get_weights()
            weights[-2] = rng.uniform(-0.2, 0.2, weights[-2].shape)  # moving mean
            weights[-1] = rng.uniform(0.5, 1.5, weights[-1].shape)   # moving variance
            layer.set_weights(weights)
    return model


def main():
    keras.utils.set_random_seed(0)
    only = set(sys.argv[1:])
    for i, (name, build, size, relu_only) in enumerate(APPLICATIONS):
        if only and name not in only:
            continue
        model = randomise_bn(build(weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None)
                             if name.startswith(("VGG", "ResNet", "Mobile", "Eff", "Dense", "Incep", "Xcep"))
                             else build(weights=None), i)
        spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="image"),)
        path = path_for(f"keras_{name.lower()}.onnx")
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=path)
        record(path, "tf2onnx (Keras applications)", name, [1, size, size, 3], relu_only)


if __name__ == "__main__":
    main()
