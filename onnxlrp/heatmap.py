"""Heatmap pictures: relevance summed over channels, red (positive) - white (0) - blue (negative)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .files import save_atomic

MIN_SIDE = 224  # small inputs are scaled up (nearest neighbour) so the picture can be read
PNG_COMPRESSION = 1  # zlib level: heatmaps are written by the thousand; level 1 is several times faster than 6


def relevance_map(relevance: np.ndarray, channel_axis: int | None = 0) -> np.ndarray:
    """A 2-D map from one sample's relevance: summed over the channel axis; 1-D inputs become one row."""
    r = np.asarray(relevance, dtype=np.float64)
    if r.ndim == 3 and channel_axis is not None:
        r = r.sum(axis=channel_axis)
    elif r.ndim == 2 and channel_axis is not None and min(r.shape) <= 4:
        r = r.sum(axis=int(np.argmin(r.shape)))
    if r.ndim == 1:
        r = r[None, :]
    while r.ndim > 2:
        r = r.sum(axis=0)
    return r


def colorize(heat: np.ndarray, scale: float | None = None) -> np.ndarray:
    """uint8 RGB for a 2-D map, centred at zero and scaled by max |value| (or `scale`)."""
    heat = np.asarray(heat, dtype=np.float64)
    limit = scale if scale else float(np.max(np.abs(heat)))
    v = np.clip(heat / limit, -1.0, 1.0) if limit > 0 else np.zeros_like(heat)
    fade = 1.0 - np.abs(v)
    red = np.where(v >= 0, 1.0, fade)
    blue = np.where(v <= 0, 1.0, fade)
    rgb = np.stack([red, fade, blue], axis=-1)
    return np.round(rgb * 255).astype(np.uint8)


def heatmap_image(relevance: np.ndarray, channel_axis: int | None = 0) -> Image.Image:
    return enlarged(Image.fromarray(colorize(relevance_map(relevance, channel_axis)), mode="RGB"))


def enlarged(image: Image.Image) -> Image.Image:
    """A small picture scaled up by a whole factor (nearest neighbour) to at least MIN_SIDE on its longer
    side: every heatmap, overlay and tile of one input has the same size."""
    w, h = image.size
    factor = max(1, int(np.ceil(MIN_SIDE / max(w, h))))
    return image.resize((w * factor, h * factor), Image.NEAREST) if factor > 1 else image


def save_heatmap(relevance: np.ndarray, path, channel_axis: int | None = 0) -> Path:
    image = heatmap_image(relevance, channel_axis)
    return save_atomic(path, lambda tmp: image.save(tmp, format="PNG", compress_level=PNG_COMPRESSION))


def save_array(array: np.ndarray, path) -> Path:
    def write(tmp):
        with open(tmp, "wb") as handle:
            np.save(handle, array)
    return save_atomic(path, write)
