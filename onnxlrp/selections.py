"""What to explain on outputs that are not [batch, classes] (docs/rules.md, "Starts beyond classifiers").

Every selection is a start relevance R_out = z * M with M shaped like the output (Zennit's
attr_output = output * mask), built here on the host:

- a region of a spatial output (segmentation [N, C, H, W], or channels-last [N, H, W, C]): class c
  within a box (y0, x0, y1, x1) (half-open, output pixels) or a mask (an array or a PNG, resized to the
  output's H x W);
- one detection of a YOLO-style head ([N, boxes, 4 + 1 + C] or [N, 4 + C, boxes]): the class-c score of
  box n;
- a direction r of a regression or embedding output [N, D] (R = z * r: with r another input's
  embedding, "why are these two close"); one output j is the one-hot direction.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError


def _per_sample(value, n: int, what: str) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim == 0:
        array = np.full(n, int(array), np.int64)
    if array.shape != (n,) or array.dtype.kind not in "iu":
        raise InputError(f"{what} must be an int or {n} ints (one per sample); got {value!r}")
    return array.astype(np.int64)


def spatial_layout(shape: tuple, layout: str | None) -> str:
    """NCHW or NHWC for a rank-4 output; `layout` if given, else NHWC where the last dim is the smallest."""
    if layout is not None:
        layout = layout.upper()
        if layout not in ("NCHW", "NHWC"):
            raise InputError(f"layout must be NCHW or NHWC; got {layout!r}")
        return layout
    return "NHWC" if shape[-1] < shape[1] and shape[-1] < shape[2] else "NCHW"


def load_mask(mask) -> np.ndarray:
    """A region mask: an array (2-D, or one per sample) or a PNG/JPEG file (non-zero pixels are in)."""
    if isinstance(mask, (str, Path)):
        from PIL import Image
        try:
            with Image.open(mask) as image:
                mask = np.asarray(image.convert("L")) > 0
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the mask '{mask}' as an image ({exc})") from None
    array = np.asarray(mask)
    if array.ndim not in (2, 3):
        raise InputError(f"a region mask is [H, W] or [batch, H, W]; got shape {array.shape}")
    return array.astype(np.float32)


def _resized(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    if mask.shape[-2:] == (height, width):
        return mask
    from PIL import Image
    planes = mask if mask.ndim == 3 else mask[None]
    resized = [np.asarray(Image.fromarray(p.astype(np.float32)).resize((width, height), Image.NEAREST))
               for p in planes]
    return np.stack(resized) if mask.ndim == 3 else resized[0]


def region_mask(shape: tuple, cls, region=None, mask=None, layout: str | None = None) -> np.ndarray:
    """M for class `cls` (per sample) inside `region` (y0, x0, y1, x1) or `mask`, on a [N, C, H, W] or
    [N, H, W, C] output."""
    if len(shape) != 4:
        raise InputError(f"a region selects pixels of a spatial output [batch, classes, H, W]; this output has "
                         f"shape {list(shape)}")
    if cls is None:
        raise InputError("a region needs the class to explain there (target=)")
    if (region is None) == (mask is None):
        raise InputError("give a region as either region=(y0, x0, y1, x1) or mask=, not both")
    layout = spatial_layout(shape, layout)
    n = shape[0]
    height, width = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    classes = shape[1] if layout == "NCHW" else shape[3]
    cls = _per_sample(cls, n, "the class")
    if np.any(cls < 0) or np.any(cls >= classes):
        raise InputError(f"class {cls.tolist()} out of range: the output has {classes} classes")
    if region is not None:
        y0, x0, y1, x1 = (int(v) for v in region)
        if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
            raise InputError(f"region {(y0, x0, y1, x1)} is empty or outside the output's {height} x {width} pixels "
                             "(y0, x0, y1, x1, half-open)")
        inside = np.zeros((height, width), np.float32)
        inside[y0:y1, x0:x1] = 1
    else:
        inside = _resized(load_mask(mask), height, width)
    inside = np.broadcast_to(inside, (n, height, width))
    selected = np.zeros(shape, np.float32)
    for i, c in enumerate(cls):
        if layout == "NCHW":
            selected[i, c] = inside[i]
        else:
            selected[i, :, :, c] = inside[i]
    return selected


def detection_mask(shape: tuple, box, cls, layout: str | None = None) -> np.ndarray:
    """M for the class-`cls` score of box `box` (per sample) of a [N, boxes, 4 + 1 + C] ("boxes_first",
    YOLOv5) or [N, 4 + C, boxes] ("attributes_first", YOLOv8) output; by default the longer axis is the
    boxes'."""
    if len(shape) != 3:
        raise InputError(f"a box selects one detection of a [batch, boxes, 4 + 1 + classes] or [batch, 4 + classes, "
                         f"boxes] output; this output has shape {list(shape)}")
    if cls is None:
        raise InputError("a box needs the class whose score is explained (target=)")
    layout = layout or ("boxes_first" if shape[1] >= shape[2] else "attributes_first")
    if layout not in ("boxes_first", "attributes_first"):
        raise InputError(f"box layout must be boxes_first or attributes_first; got {layout!r}")
    n = shape[0]
    boxes, attributes, offset = (shape[1], shape[2], 5) if layout == "boxes_first" else (shape[2], shape[1], 4)
    box, cls = _per_sample(box, n, "the box"), _per_sample(cls, n, "the class")
    if np.any(box < 0) or np.any(box >= boxes):
        raise InputError(f"box {box.tolist()} out of range: the output has {boxes} boxes")
    if np.any(cls < 0) or np.any(offset + cls >= attributes):
        raise InputError(f"class {cls.tolist()} out of range: the output has {attributes - offset} classes")
    selected = np.zeros(shape, np.float32)
    for i in range(n):
        if layout == "boxes_first":
            selected[i, box[i], offset + cls[i]] = 1
        else:
            selected[i, offset + cls[i], box[i]] = 1
    return selected


def detection_support(shape: tuple, layout: str | None = None) -> tuple[int, int, int]:
    """(axis, start, stop): where a detection mask can be non-zero: the class scores, not the box coordinates
    (nor YOLOv5's objectness), whichever box and class are chosen."""
    layout = layout if layout in ("boxes_first", "attributes_first") else (
        "boxes_first" if shape[1] >= shape[2] else "attributes_first")
    return (2, 5, int(shape[2])) if layout == "boxes_first" else (1, 4, int(shape[1]))


def direction_mask(shape: tuple, direction) -> np.ndarray:
    """M = r for a [N, D] output (r: [D] for every sample, or [N, D])."""
    r = np.asarray(direction, np.float32)
    if r.shape not in (tuple(shape[1:]), tuple(shape)):
        raise InputError(f"direction has shape {list(r.shape)}; expected {list(shape[1:])} or {list(shape)}")
    if not np.all(np.isfinite(r)):
        raise InputError("direction contains NaN or infinite values")
    return np.ascontiguousarray(np.broadcast_to(r, shape), np.float32)


def output_mask(shape: tuple, target=None, region=None, mask=None, box=None, direction=None,
                layout: str | None = None) -> np.ndarray:
    """The M of whichever selection is given."""
    given = [name for name, value in (("region", region), ("mask", mask), ("box", box), ("direction", direction))
             if value is not None]
    if len(given) > 1 and set(given) != {"region"} and set(given) != {"mask"}:
        raise InputError(f"give one selection, not {' and '.join(given)}")
    if region is not None or mask is not None:
        return region_mask(shape, target, region=region, mask=mask, layout=layout)
    if box is not None:
        return detection_mask(shape, box, target, layout=layout if layout in ("boxes_first", "attributes_first")
                              else None)
    return direction_mask(shape, direction)
