"""Corpus models from Keras via tf2onnx (NHWC inputs behind a Transpose, Dense as MatMul + Add, Keras
preprocessing layers inside the graph).  Run where tensorflow and tf2onnx are installed:
    python tools/corpus/keras_models.py
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf2onnx
from tensorflow import keras
from tensorflow.keras import layers

from manifest import path_for, record

EXPORTER = "tf2onnx (Keras)"


def randomise_bn(model, seed):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.uniform(-0.2, 0.2, beta.shape),
                               rng.uniform(-0.2, 0.2, mean.shape), rng.uniform(0.5, 1.5, var.shape)])
        elif isinstance(layer, (layers.Dense, layers.Conv2D, layers.DepthwiseConv2D)) and layer.use_bias:
            weights = layer.get_weights()
            weights[-1] = rng.normal(0, 0.1, weights[-1].shape)
            layer.set_weights(weights)
    return model


def cnn():
    """Rescaling + Normalization inside, Conv-BN-ReLU, MaxPool, Flatten, Dense, Dropout, softmax."""
    inp = keras.Input((24, 24, 3), name="image")
    x = layers.Rescaling(1 / 255.0)(inp)
    x = layers.Normalization(mean=[0.5, 0.4, 0.3], variance=[0.05, 0.06, 0.07])(x)
    for filters in (8, 16):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(32, activation="relu")(x)
    x = layers.Dropout(0.3)(x)
    return keras.Model(inp, layers.Dense(10, activation="softmax")(x))


def mobilenet():
    """ZeroPadding2D, DepthwiseConv2D, ReLU6, squeeze-excitation (Multiply), hard-swish, GAP."""
    inp = keras.Input((32, 32, 3), name="image")
    x = layers.ZeroPadding2D(((0, 1), (0, 1)))(inp)
    x = layers.Conv2D(8, 3, strides=2, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU(6.0)(x)
    y = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU(6.0)(y)
    s = layers.GlobalAveragePooling2D(keepdims=True)(y)
    s = layers.Conv2D(4, 1, activation="relu")(s)
    s = layers.Conv2D(8, 1, activation="hard_sigmoid")(s)
    y = layers.Multiply()([y, s])
    y = layers.Conv2D(8, 1, use_bias=False)(y)
    y = layers.BatchNormalization()(y)
    x = layers.Add()([x, y])
    x = layers.Conv2D(16, 1)(x)
    x = layers.Activation("hard_swish")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(10)(x))


def unet_like():
    """UpSampling2D (nearest and bilinear), Concatenate, Add, AveragePooling2D, LeakyReLU, sigmoid head."""
    inp = keras.Input((16, 16, 3), name="image")
    a = layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    b = layers.AveragePooling2D(2)(a)
    b = layers.Conv2D(8, 3, padding="same")(b)
    b = layers.LeakyReLU(0.2)(b)
    u = layers.UpSampling2D(interpolation="nearest")(b)
    v = layers.UpSampling2D(interpolation="bilinear")(b)
    x = layers.Concatenate()([a, layers.Add()([u, v])])
    x = layers.Conv2D(8, 3, padding="same", activation="elu")(x)
    x = layers.GlobalMaxPooling2D()(x)
    return keras.Model(inp, layers.Dense(5, activation="sigmoid")(x))


def export(model, name, opset, family, relu_only, notes=""):
    shape = [1] + list(model.input.shape[1:])
    spec = (tf.TensorSpec([None] + shape[1:], tf.float32, name="image"),)
    path = path_for(name)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset, output_path=path)
    record(path, EXPORTER, family, shape, relu_only, notes)


def main():
    keras.utils.set_random_seed(0)
    export(randomise_bn(cnn(), 1), "keras_cnn_op9.onnx", 9, "VGG", False,
           notes="NHWC input, Rescaling and Normalization inside the graph: the mean shift before a padded "
                 "conv cannot fold, so it passes relevance (docs/rules.md) and LRP-0 is gradient x (x - mean)")
    export(randomise_bn(mobilenet(), 2), "keras_mobilenet_op13.onnx", 13, "MobileNet-v3", False)
    export(randomise_bn(unet_like(), 3), "keras_upsampling_op17.onnx", 17, "encoder-decoder", False)


if __name__ == "__main__":
    main()
