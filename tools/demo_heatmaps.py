"""How well each composite explains the demo models, over the whole held-out split of the digits
(tools/train_digits.py): the share of the positive relevance on stroke pixels (> 0.25), the share of
negative relevance, the largest single pixel's share, and conservation (relevance sum / explained logit).

    python tools/demo_heatmaps.py            # both models, the composites each takes
    python tools/demo_heatmaps.py vit

Needs scikit-learn (the digits) and Pillow; no torch.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from onnxlrp import Explainer, composites

DEMO = Path(__file__).resolve().parent.parent / "models" / "demo"
STROKE = 0.25

CANDIDATES = {
    "cnn": {"epsilon_plus_flat": composites.EpsilonPlusFlat(),
            "epsilon_gamma_box": composites.EpsilonGammaBox(low=0.0, high=1.0)},
    "vit": {"attn_lrp": composites.AttnLRP(),
            "attn_lrp gamma 0.1": composites.AttnLRP(gamma=0.1),
            "attn_lrp gamma 0.25": composites.AttnLRP(gamma=0.25),   # the README's and the page's
            "attn_lrp gamma 0.5": composites.AttnLRP(gamma=0.5),
            "cp_lrp": composites.CPLRP(),
            "cp_lrp gamma 0.25": composites.CPLRP(gamma=0.25)},
}


def held_out_digits():
    """The held-out quarter of scikit-learn's digits as the demo models see them ([N, 1, 32, 32] in [0, 1])."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    _, test = train_test_split(np.arange(len(digits.target)), test_size=0.25, random_state=0, stratify=digits.target)
    images = np.stack([np.asarray(Image.fromarray((digits.images[i] / 16 * 255).astype(np.uint8)).resize(
        (32, 32), Image.BILINEAR), np.float32) / 255 for i in test])[:, None]
    return images, digits.target[test]


def quality(relevance: np.ndarray, images: np.ndarray, logits: np.ndarray) -> dict:
    r = relevance.reshape(len(relevance), -1).astype(np.float64)
    positive = np.clip(r, 0, None)
    strokes = images.reshape(len(images), -1) > STROKE
    return {"on_strokes": (positive * strokes).sum(1) / positive.sum(1),
            "negative": np.clip(-r, 0, None).sum(1) / np.abs(r).sum(1),
            "top_pixel": np.abs(r).max(1) / np.abs(r).sum(1),
            "conservation": r.sum(1) / logits}


def report(model: str) -> None:
    images, labels = held_out_digits()
    print(f"digits_{model}.onnx, {len(images)} held-out digits, each explained for its true class")
    print(f"{'composite':<22} {'on strokes min / median':>24} {'negative median':>16} {'top pixel max':>14} "
          f"{'conservation median':>20}")
    for name, composite in CANDIDATES[model].items():
        res = Explainer(str(DEMO / f"digits_{model}.onnx"), composite=composite).explain(images, target=labels)
        q = quality(res.relevance, images, res.outputs[0][np.arange(len(labels)), labels])
        print(f"{name:<22} {q['on_strokes'].min():>11.3f} / {np.median(q['on_strokes']):.3f} "
              f"{np.median(q['negative']):>16.3f} {q['top_pixel'].max():>14.3f} {np.median(q['conservation']):>20.3f}")


if __name__ == "__main__":
    for model in sys.argv[1:] or ["cnn", "vit"]:
        report(model)
