"""Train the demo models in models/demo/ on scikit-learn's bundled 8x8 digits (upsampled to 32x32): a
small CNN and a tiny ViT that learned something, so that heatmaps mean something. Needs torch,
transformers and scikit-learn; no download.

    python tools/train_digits.py            # rewrites models/demo/*.onnx, manifest.json and digits/*.png
    python tools/train_digits.py vit        # only digits_vit.onnx (and its manifest entry)

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

    config = transformers.ViTConfig(image_size=SIZE, patch_size=4, num_channels=1, hidden_size=64,
                                    num_hidden_layers=3, num_attention_heads=4, intermediate_size=128, num_labels=10,
                                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config._attn_implementation = "eager"
    return TinyViT(config)


def augmented(x, most: int, noise: float):
    """Each image moved by up to `most` pixels in each direction (zeros come in), plus Gaussian noise of
    standard deviation `noise`. The ViT has no convolutional prior: without the shifts it learns where
    strokes sit rather than what they are, and without the noise its patch filters rest on the faint
    pixels at the strokes' edges (its heatmaps then leave the strokes: tools/demo_heatmaps.py)."""
    import torch
    if most:
        padded = torch.nn.functional.pad(x, (most,) * 4)
        dy, dx = torch.randint(0, 2 * most + 1, (2, len(x)))
        x = torch.stack([padded[i, :, dy[i]:dy[i] + SIZE, dx[i]:dx[i] + SIZE] for i in range(len(x))])
    return x + noise * torch.randn_like(x) if noise else x


def train(model, x, y, epochs: int, lr: float, seed: int = 0, shift: int = 0, noise: float = 0.0,
          weight_decay: float = 0.0):
    import torch
    torch.manual_seed(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-len(x) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps) if shift else None
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            batch = order[i:i + 64]
            loss = torch.nn.functional.cross_entropy(model(augmented(x[batch], shift, noise)), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if schedule is not None:
                schedule.step()
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


# name -> (builder, epochs, learning rate, shift in pixels, noise, weight decay, architecture)
MODELS = {
    "digits_cnn": (cnn, 30, 2e-3, 0, 0.0, 0.0, "Conv-ReLU-MaxPool x3, Linear-ReLU-Linear"),
    "digits_vit": (vit, 150, 2e-3, 2, 0.2, 0.05,
                   "HF ViT: patch 4, hidden 64, 3 layers, 4 heads, trained on digits shifted by up to 2 pixels with "
                   "noise 0.2 (explain with composite attn_lrp and --gamma 0.25)"),
}


def main(names=tuple(MODELS)):
    import torch
    from PIL import Image
    torch.set_num_threads(1)   # the same weights on any machine: no thread-count-dependent sums
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = data()
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((OUT / "manifest.json").read_text()) if (OUT / "manifest.json").exists() else {}
    manifest.update({"data": "scikit-learn load_digits (1797 8x8 digits), bilinear-upsampled to 32x32 in [0, 1]; "
                        "train/test split 75/25, stratified, random_state=0",
                "input": "image [batch, 1, 32, 32], white strokes (1) on black (0), as the PNGs in digits/"})
    manifest.setdefault("models", {})
    for name in names:
        make, epochs, lr, shift, noise, weight_decay, architecture = MODELS[name]
        torch.manual_seed(0)
        model = train(make(), x_train, y_train, epochs, lr, shift=shift, noise=noise, weight_decay=weight_decay)
        export(model, OUT / f"{name}.onnx")
        manifest["models"][f"{name}.onnx"] = {
            "architecture": architecture, "test_accuracy": round(accuracy(model, x_test, y_test), 4),
            "epochs": epochs, "bytes": (OUT / f"{name}.onnx").stat().st_size}
        print(name, manifest["models"][f"{name}.onnx"])
    images = OUT / "digits"
    images.mkdir(exist_ok=True)
    for digit in range(10):
        index = int(np.flatnonzero(y_test.numpy() == digit)[0])
        pixels = (x_test[index, 0].numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(images / f"test_{digit}.png")
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    import sys
    main(tuple(f"digits_{n}" for n in sys.argv[1:]) or tuple(MODELS))
