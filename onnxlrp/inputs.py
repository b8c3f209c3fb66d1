"""Reading inputs for the command line: .npy arrays or images.

Image preprocessing (documented in README): the image is converted to RGB (or grayscale when the
model takes one channel), resized to the model's height x width with bilinear filtering, scaled to
[0, 1], normalised per channel as (x - mean) / std when --mean/--std are given, and laid out as
the model expects (channels first, NCHW, unless the model's input ends in 1 or 3 channels, NHWC).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from .errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
# The largest image decoded: a few bytes of PNG can claim billions of pixels (a decompression bomb), and the
# header says how many before any is decoded.
MAX_PIXELS = 4096 * 4096


class ImageTooLarge(InputError):
    """An image with more pixels than MAX_PIXELS."""


def open_image(source, name: str):
    """A PIL image of at most MAX_PIXELS pixels, header read only (decoding comes later); an InputError for
    anything that is not a readable image of that size. source: a path or a binary file object."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(source)
    except Image.DecompressionBombError as exc:   # PIL's own limit, far above ours
        raise ImageTooLarge(f"'{name}' is not decoded: {exc}; at most {MAX_PIXELS} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"cannot read '{name}' as an image ({exc})") from None
    if image.width * image.height > MAX_PIXELS:
        image.close()
        raise ImageTooLarge(f"'{name}': the image is {image.width} x {image.height} pixels; at most {MAX_PIXELS}")
    return image


def channels_last(shape) -> bool:
    """NHWC if the last dim looks like channels and the second does not."""
    return len(shape) == 4 and shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4)


def csv_rows(path: str | Path) -> tuple[list[str] | None, np.ndarray]:
    """A CSV file of samples, one a row: (its header's column names or None, the rows as float32)."""
    path = Path(path)
    status = path.stat()
    return _csv_rows(str(path), status.st_mtime_ns, status.st_size)


@functools.lru_cache(maxsize=8)
def _csv_rows(path: str, mtime: int, size: int):
    try:
        lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read '{path}' as a CSV file ({exc})") from None
    if not lines:
        raise InputError(f"'{path}' is empty")
    header = None
    try:
        [float(v) for v in lines[0].split(",")]
    except ValueError:
        header, lines = [v.strip() for v in lines[0].split(",")], lines[1:]
    try:
        rows = np.asarray([[float(v) for v in line.split(",")] for line in lines], dtype=np.float32)
    except ValueError:
        raise InputError(f"'{path}': every row after the header must be numbers separated by commas") from None
    if rows.ndim != 2 or not len(rows):
        raise InputError(f"'{path}' holds no rows of numbers (or rows of different lengths)")
    return header, rows


def load_input(path: str | Path, shape, mean=None, std=None, row: int | None = None) -> np.ndarray:
    """One sample (without batch axis) as float32, shaped like `shape[1:]` (row: of a CSV file)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        _, rows = csv_rows(path)
        sample = rows[row or 0]
        expected = tuple(shape[1:])
        if sample.shape != expected and not any(not isinstance(d, int) for d in expected):
            raise InputError(f"'{path}' row {row or 0} has {sample.size} values; the model expects {expected}")
        return sample
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as exc:
            detail = str(exc).strip().splitlines()
            raise InputError(f"cannot read '{path}' as a .npy array ({type(exc).__name__}"
                             + (f": {detail[0]}" if detail else "") + ")") from None
        array = np.asarray(array, dtype=np.float32)
        expected = tuple(shape[1:])
        if array.ndim == len(shape) and array.shape[0] == 1:
            array = array[0]
        if array.shape != expected and not any(not isinstance(d, int) for d in expected):
            raise InputError(f"'{path}' holds an array of shape {array.shape}; the model expects {expected}")
        return array
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _load_image(path, shape, mean, std)
    raise InputError(f"'{path}': give images ({', '.join(sorted(IMAGE_SUFFIXES))}), .npy arrays or CSV rows")


def _load_image(path: Path, shape, mean, std) -> np.ndarray:
    from PIL import Image

    last = channels_last(shape) if len(shape) == 4 else False
    channels = (shape[3] if last else shape[1]) if len(shape) == 4 else None
    if len(shape) != 4 or not isinstance(channels, int):
        raise InputError(f"the model input {list(shape)} is not an image batch with a fixed channel count; "
                         "give .npy arrays")
    height, width = (shape[1], shape[2]) if last else (shape[2], shape[3])
    try:
        with open_image(path, str(path)) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if isinstance(height, int) and isinstance(width, int):   # free sizes keep the image's own
                image = image.resize((width, height), Image.BILINEAR)
            array = np.asarray(image, dtype=np.float32) / 255.0
    except (OSError, ValueError) as exc:   # a file that breaks off while decoding
        raise InputError(f"cannot read '{path}' as an image ({exc})") from None
    if array.ndim == 2:
        array = array[..., None]
    if channels not in (1, 3):
        raise InputError(f"the model takes {channels} channels; images give 1 or 3, use .npy arrays")
    if mean is not None:
        array = array - np.asarray(mean, dtype=np.float32).reshape(1, 1, -1)
    if std is not None:
        array = array / np.asarray(std, dtype=np.float32).reshape(1, 1, -1)
    return array if last else np.ascontiguousarray(array.transpose(2, 0, 1))
