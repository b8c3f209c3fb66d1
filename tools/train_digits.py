"""Train the demo models in models/demo/ on scikit-learn's bundled 8x8 digits (upsampled to 32x32): a
small CNN and a tiny ViT that learned something, so that heatmaps mean something. Needs torch,
transformers and scikit-learn; no download.

    python tools/train_digits.py        # rewrites models/demo/*.onnx, manifest.json and digits/*.png

The split is seeded (a quarter of the 1797 digits held out); manifest.json records each model's test
accuracy on it. The test images are held-out digits, one per class, as the models see them.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "models" / "demo"
SIZE = 32


def data():
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).clamp(0, 1)
    x = (x * 255).round() / 255    # what the PNGs hold
    y = torch.as_tensor(digits.target)
    train, test = train_test_split(np.arange(len(y)), test_size=0.25, random_state=0, stratify=y.numpy())
    return x[train], y[train], x[test], y[test]


def cnn():
    import torch.nn as nn
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))


def vit():
    import transformers

    class TinyViT(transformers.ViTForImageClassification):
        def forward(self, image):   # logits only, input named like the CNN's
            return super().forward(pixel_values=image).logits

    config = transformers.ViTConfig(image_size=SIZE, patch_size=4, num_channels=1, hidden_size=48,
                                    num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, num_labels=10,
                                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config._attn_implementation = "eager"
    return TinyViT(config)


def train(model, x, y, epochs: int, lr: float, seed: int = 0):
    import torch
    torch.manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            batch = order[i:i + 64]
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


def accuracy(model, x, y) -> float:
    import torch
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def export(model, path: Path):
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 1, SIZE, SIZE), str(path), input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)


def main():
    import torch
    from PIL import Image
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = data()
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = {"data": "scikit-learn load_digits (1797 8x8 digits), bilinear-upsampled to 32x32 in [0, 1]; "
                        "train/test split 75/25, stratified, random_state=0",
                "input": "image [batch, 1, 32, 32], white strokes (1) on black (0), as the PNGs in digits/",
                "models": {}}
    for name, make, epochs, lr in (("digits_cnn", cnn, 30, 2e-3), ("digits_vit", vit, 60, 1e-3)):
        model = train(make(), x_train, y_train, epochs, lr)
        export(model, OUT / f"{name}.onnx")
        manifest["models"][f"{name}.onnx"] = {
            "architecture": "Conv-ReLU-MaxPool x3, Linear-ReLU-Linear" if name == "digits_cnn" else
            "HF ViT: patch 4, hidden 48, 2 layers, 4 heads (explain with composite attn_lrp or cp_lrp)",
            "test_accuracy": round(accuracy(model, x_test, y_test), 4), "epochs": epochs,
            "bytes": (OUT / f"{name}.onnx").stat().st_size}
        print(name, manifest["models"][f"{name}.onnx"])
    images = OUT / "digits"
    images.mkdir(exist_ok=True)
    for digit in range(10):
        index = int(np.flatnonzero(y_test.numpy() == digit)[0])
        pixels = (x_test[index, 0].numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(images / f"test_{digit}.png")
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
