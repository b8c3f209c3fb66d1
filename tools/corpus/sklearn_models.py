"""A scikit-learn MLP classifier via skl2onnx (label and probability outputs).
Run where scikit-learn and skl2onnx are installed:  python tools/corpus/sklearn_models.py
"""
from __future__ import annotations

import numpy as np
from skl2onnx import to_onnx
from sklearn.neural_network import MLPClassifier

from manifest import path_for, record


def main():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 12)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int) + (X[:, 3] > 1).astype(int)
    clf = MLPClassifier(hidden_layer_sizes=(16, 8), max_iter=300, random_state=0).fit(X, y)
    model = to_onnx(clf, X[:1], options={id(clf): {"zipmap": False}}, target_opset=15)
    path = path_for("sklearn_mlp_op15.onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    record(path, "skl2onnx (scikit-learn)", "MLP", [1, 12], True, notes="outputs: label (int64) and probabilities",
           output="probabilities")


if __name__ == "__main__":
    main()
