"""Planted anomalies against onnxlrp's one-class SVM explanations (OC-DTD, docs/oneclass.md).

For each configuration: fit scikit-learn's OneClassSVM (with or without a StandardScaler in front) on normal
data, plant anomalies (one feature of a row pushed k standard deviations out, up or down), export with
skl2onnx, explain with onnxlrp, and count, among the planted rows the SVM flags, those whose planted feature
has the largest relevance with o(x) > 0. Also: o(x) >= 0 and R_i >= 0 on every row, conservation, and the
explainer's label against onnxruntime on the exported model. The planted rows are held out (fresh rows) or
in the training data (then they are support vectors themselves).

    PYTHONPATH=. python tools/oneclass_planted.py        # from the repository root; about 20 s
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import skl2onnx
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from onnxlrp import Explainer

CONFIGS = [  # gamma, nu, scaler, n, d
    ("scale", 0.5, True, 1000, 8),    # scikit-learn's defaults behind a StandardScaler (the case)
    ("scale", 0.5, False, 1000, 8),
    (0.02, 0.5, True, 1000, 8), (0.05, 0.3, True, 600, 12), (0.1, 0.2, True, 1000, 8),
    (0.02, 0.2, False, 800, 6), (0.05, 0.5, False, 500, 10), (0.1, 0.3, False, 1000, 8),
    (0.5, 0.05, True, 400, 4), (1.0, 0.1, True, 300, 5), ("scale", 0.05, True, 2000, 16),
]


def _data(rng, n, d, kind):
    """'even': independent features of about equal spread (0.8 to 1.25), centres -5 to 5; 'mixed': spreads
    0.3 to 4, centres -20 to 20, feature 1 correlated with feature 0."""
    if kind == "even":
        return rng.normal(size=(n, d)) * rng.uniform(0.8, 1.25, d) + rng.uniform(-5, 5, d)
    x = rng.normal(size=(n, d)) * rng.uniform(0.3, 4.0, d) + rng.uniform(-20, 20, d)
    x[:, 1] += 0.8 * x[:, 0]
    return x


def _plant(rng, rows, spread, push, features):
    rows = rows.copy()
    rows[np.arange(len(rows)), features] += rng.choice([-1.0, 1.0], len(rows)) * push * spread[features]
    return rows


def _fit(gamma, nu, scaler, x_train):
    model = OneClassSVM(gamma=gamma, nu=nu)
    model = make_pipeline(StandardScaler(), model) if scaler else model
    return model.fit(x_train), skl2onnx.to_onnx(model, x_train[:1].astype(np.float32),
                                                target_opset={"": 17, "ai.onnx.ml": 3})


def measure(gamma, nu, scaler, n, d, kind, *, in_training=False, push=6.0, planted=100, seeds=5):
    """Held out: `planted` fresh rows, each with one feature pushed `push` standard deviations out, against
    one model. In training: each of `seeds` models is fitted on data holding min(d, 4) such rows (distinct
    features), which are then explained as they are (support vectors themselves)."""
    found = dict(flagged=0, rows=0, hits=0, caused=0, caused_hits=0, min_score=np.inf, min_relevance=np.inf,
                 conservation=0.0, label_mismatch=0, decision_error=0.0)
    for seed in range(seeds if in_training else 1):
        rng = np.random.default_rng(seed)
        x_train, fresh = np.split(_data(rng, n + planted, d, kind), [n])
        spread = x_train.std(0)
        if in_training:
            features = rng.choice(d, min(d, 4), replace=False)
            rows = x_train[:len(features)] = _plant(rng, x_train[:len(features)], spread, push, features)
        else:
            features = rng.integers(0, d, planted)
            rows = _plant(rng, fresh, spread, push, features)
        model, onnx_model = _fit(gamma, nu, scaler, x_train)
        rows = rows.astype(np.float32)
        res = Explainer(onnx_model).explain(rows)
        label = res.outputs[0].ravel()
        original = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
        flagged = label == -1
        hits = (res.relevance.argmax(1) == features) & (res.score > 0)
        found["flagged"] += int(flagged.sum())
        found["rows"] += len(rows)
        found["hits"] += int(hits[flagged].sum())
        if not in_training:   # the rows flagged because of the planting: the same rows unchanged are inliers
            caused = flagged & (model.predict(fresh.astype(np.float32)) == 1)
            found["caused"] += int(caused.sum())
            found["caused_hits"] += int(hits[caused].sum())
        found["min_score"] = min(found["min_score"], float(res.score.min()))
        found["min_relevance"] = min(found["min_relevance"], float(res.relevance.min()))
        scale = np.abs(res.relevance).sum(1)
        found["conservation"] = max(found["conservation"],
                                    float((np.abs(res.relevance.sum(1) - res.score) / scale).max()))
        original_label = original.run(None, {original.get_inputs()[0].name: rows})[0].ravel()
        found["label_mismatch"] += int((label != original_label).sum())
        found["decision_error"] = max(found["decision_error"],
                                      float(np.abs(res.outputs[1].ravel() - model.decision_function(rows)).max()))
    found["pass_rate"] = found["hits"] / found["flagged"] if found["flagged"] else float("nan")
    found["caused_rate"] = found["caused_hits"] / found["caused"] if found["caused"] else float("nan")
    return found


def main():
    print("data   gamma  nu    scaler n    d  | held out: flagged/rows pass (flagged for the planting: rows pass) | "
          "in training: flagged/rows pass | min o(x)  min R_i  conservation  labels != onnxruntime  max |f - sklearn|")
    for kind in ("even", "mixed"):
        for gamma, nu, scaler, n, d in CONFIGS:
            out = measure(gamma, nu, scaler, n, d, kind)
            inside = measure(gamma, nu, scaler, n, d, kind, in_training=True)
            both = (out, inside)
            print(f"{kind:6} {gamma!s:6} {nu:<5} {scaler!s:6} {n:<4} {d:<2} | {out['flagged']:3}/{out['rows']} "
                  f"{out['pass_rate']:.2f} ({out['caused']:3} {out['caused_rate']:.2f}) | "
                  f"{inside['flagged']:3}/{inside['rows']} {inside['pass_rate']:.2f} | "
                  f"{min(f['min_score'] for f in both):.3g} {min(f['min_relevance'] for f in both):.3g} "
                  f"{max(f['conservation'] for f in both):.1e} {sum(f['label_mismatch'] for f in both)} "
                  f"{max(f['decision_error'] for f in both):.1e}")


if __name__ == "__main__":
    main()
