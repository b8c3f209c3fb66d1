"""Pictures for reports: heatmap overlays on the input, grids of heatmaps, and curve/per-layer plots.

Heatmaps use heatmap.colorize (zero-centred red-white-blue). Overlays and grids need only Pillow; the
plots need matplotlib (the `plots` extra) and return False without it.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .files import save_atomic
from .heatmap import PNG_COMPRESSION, colorize, enlarged, relevance_map

LABEL_HEIGHT = 16


def input_image(sample: np.ndarray, channel_axis: int | None = 0) -> np.ndarray:
    """A float [H, W] grey picture of one input sample, scaled to [0, 1] (any normalisation undone by
    min-max scaling)."""
    grey = relevance_map(sample, channel_axis)  # the channel mean up to a factor: scaling removes it
    low, high = grey.min(), grey.max()
    return (grey - low) / (high - low) if high > low else np.zeros_like(grey)


def overlay(relevance: np.ndarray, sample: np.ndarray, channel_axis: int | None = 0,
            strength: float = 0.85) -> Image.Image:
    """The heatmap over a grey copy of the input: strong relevance shows its colour, weak relevance lets
    the image through."""
    heat = relevance_map(relevance, channel_axis)
    limit = np.max(np.abs(heat))
    weight = (np.abs(heat) / limit if limit > 0 else np.zeros_like(heat))[..., None] * strength
    grey = np.repeat(input_image(sample, channel_axis)[..., None], 3, axis=-1) * 0.8 + 0.1
    rgb = (1 - weight) * grey * 255 + weight * colorize(heat)
    return enlarged(Image.fromarray(np.round(rgb).astype(np.uint8), mode="RGB"))


def grid(tiles: list[list[Image.Image]], column_labels: list[str] | None = None,
         row_labels: list[str] | None = None, gap: int = 4) -> Image.Image:
    """Tiles side by side (rows x columns) on white, with a caption above each column and row."""
    rows, columns = len(tiles), max(len(r) for r in tiles)
    tile_w = max(t.size[0] for r in tiles for t in r)
    tile_h = max(t.size[1] for r in tiles for t in r)
    left = 8 + 7 * max((len(s) for s in row_labels), default=0) if row_labels else 0
    top = LABEL_HEIGHT if column_labels else 0
    sheet = Image.new("RGB", (left + columns * (tile_w + gap) + gap, top + rows * (tile_h + LABEL_HEIGHT + gap)),
                      "white")
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(column_labels or []):
        draw.text((left + gap + c * (tile_w + gap), 2), label[: tile_w // 6], fill="black")
    for r, row in enumerate(tiles):
        y = top + r * (tile_h + LABEL_HEIGHT + gap) + gap
        if row_labels:
            draw.text((4, y + tile_h // 2), row_labels[r], fill="black")
        for c, tile in enumerate(row):
            sheet.paste(tile, (left + gap + c * (tile_w + gap), y))
    return sheet


def save_image(image: Image.Image, path):
    return save_atomic(path, lambda tmp: image.save(tmp, format="PNG", compress_level=PNG_COMPRESSION))


def pyplot_or_none():
    """matplotlib.pyplot on the Agg backend, or None where matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_curves(path, series, xlabel: str, ylabel: str, title: str) -> bool:
    """series: (label, x, y, line style) tuples, drawn on one axes and saved as a PNG."""
    plt = pyplot_or_none()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, xs, ys, style in series:
        ax.plot(xs, ys, style, label=label, linewidth=1.5)
    ax.set_xlabel(xlabel)
    return _finish(plt, fig, ax, path, ylabel, title)


def plot_layers(path, labels: list[str], series: dict[str, np.ndarray], ylabel: str, title: str,
                ylim: tuple[float, float] | None = None) -> bool:
    """One line per series over the layers (x axis: the layer labels, output/top layer first)."""
    plt = pyplot_or_none()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(labels)), 4))
    for name, values in series.items():
        ax.plot(range(len(labels)), values, "--" if "baseline" in name else "-o", label=name, markersize=3)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=70, ha="right", fontsize=7)
    if ylim:
        ax.set_ylim(*ylim)
    return _finish(plt, fig, ax, path, ylabel, title)


def _finish(plt, fig, ax, path, ylabel: str, title: str) -> bool:
    """Label, grid and legend; write the PNG atomically."""
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return True


def feature_bars(relevance: np.ndarray, names: list[str] | None = None, values: np.ndarray | None = None,
                 width: int = 560) -> Image.Image:
    """Each feature's relevance as a horizontal bar, red for, blue against, with its name and value."""
    relevance = np.asarray(relevance, dtype=np.float64).ravel()
    names = list(names) if names is not None and len(names) == relevance.size else \
        [f"feature {i}" for i in range(relevance.size)]
    row, left = 18, 8 + 7 * max(len(n) for n in names) + (60 if values is not None else 0)
    sheet = Image.new("RGB", (width, row * relevance.size + 24), "white")
    draw = ImageDraw.Draw(sheet)
    scale = float(np.max(np.abs(relevance))) or 1.0
    middle = left + (width - left - 70) // 2
    half = (width - left - 70) // 2
    draw.line([(middle, 4), (middle, row * relevance.size + 4)], fill="#999")
    for i, (name, r) in enumerate(zip(names, relevance)):
        y = 6 + i * row
        label = name if values is None else f"{name} = {float(np.ravel(values)[i]):.3g}"
        draw.text((4, y), label, fill="black")
        length = int(half * abs(r) / scale)
        box = [middle, y, middle + length, y + row - 6] if r >= 0 else [middle - length, y, middle, y + row - 6]
        draw.rectangle(box, fill=(200, 40, 40) if r >= 0 else (40, 90, 200))
        draw.text((middle + half + 6, y), f"{r:+.3g}", fill="black")
    draw.text((4, row * relevance.size + 8), "relevance per feature (red: for the explained score)", fill="#555")
    return sheet
