"""LpPool and GlobalLpPool as deep Taylor decomposition treats them: sum pooling of |x| with the ratio of
norms held constant, a detection layer with weights 1: R_i = sum over windows w holding i of
|x_i| / stab(sum_{j in w} |x_j|) * R_w. Against that rule written as a dense matrix in numpy."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest

from onnxlrp import Explainer

EPS = 1e-6


def _model(pool: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(f"""<ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 2, 5, 5] x) => (float[N, K] y) {{
        p = {pool}
        y = Flatten(p)
    }}""")


def _reference(x: np.ndarray, kernel, strides, pads, relevance_out: np.ndarray) -> np.ndarray:
    """Dense rule matrix per channel: window (oy, ox) covers input (iy, ix)."""
    channels, height, width = x.shape
    out_h = (height + pads[0] + pads[2] - kernel[0]) // strides[0] + 1
    out_w = (width + pads[1] + pads[3] - kernel[1]) // strides[1] + 1
    result = np.zeros_like(x, dtype=np.float64)
    for c, oy, ox in itertools.product(range(channels), range(out_h), range(out_w)):
        cells = [(oy * strides[0] - pads[0] + ky, ox * strides[1] - pads[1] + kx)
                 for ky, kx in itertools.product(range(kernel[0]), range(kernel[1]))]
        cells = [(iy, ix) for iy, ix in cells if 0 <= iy < height and 0 <= ix < width]
        total = sum(abs(x[c, iy, ix]) for iy, ix in cells) + EPS
        for iy, ix in cells:
            result[c, iy, ix] += abs(x[c, iy, ix]) / total * relevance_out[c, oy, ox]
    return result


@pytest.mark.parametrize("kernel,strides,pads", [((2, 2), (2, 2), (0, 0, 0, 0)), ((3, 3), (1, 1), (1, 1, 1, 1)),
                                                 ((3, 2), (2, 1), (1, 0, 1, 0))])
def test_lp_pool_against_the_dense_rule(kernel, strides, pads, rng):
    pool = (f"LpPool<kernel_shape = [{kernel[0]}, {kernel[1]}], strides = [{strides[0]}, {strides[1]}], "
            f"pads = [{', '.join(str(p) for p in pads)}], p = 2>(x)")
    ex = Explainer(_model(pool), composite="lrp0")
    x = rng.normal(size=(1, 2, 5, 5)).astype(np.float32)
    y = ex.logits(x)
    out = y.reshape(1, 2, -1)
    target = 3
    start = np.zeros_like(y)
    start[0, target] = y[0, target]
    res = ex.explain(x, target=target)
    expected = _reference(x[0].astype(np.float64), kernel, strides, pads, start.reshape(out.shape).reshape(
        2, *_out_hw(kernel, strides, pads)))
    np.testing.assert_allclose(res.relevance[0], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res.relevance.sum(), y[0, target], rtol=1e-4)   # conserved


def _out_hw(kernel, strides, pads):
    return tuple((5 + pads[i] + pads[i + 2] - kernel[i]) // strides[i] + 1 for i in range(2))


def test_global_lp_pool_shares_by_magnitude(rng):
    ex = Explainer(_model("GlobalLpPool<p = 3>(x)"), composite="lrp0")
    x = rng.normal(size=(2, 2, 5, 5)).astype(np.float32)
    res = ex.explain(x, target=1)
    z = ex.logits(x)[:, 1]
    expected = np.zeros_like(x, dtype=np.float64)
    magnitude = np.abs(x[:, 1].astype(np.float64))
    expected[:, 1] = magnitude / (magnitude.sum(axis=(1, 2), keepdims=True) + EPS) * z[:, None, None]
    np.testing.assert_allclose(res.relevance, expected, rtol=1e-5, atol=1e-7)
    assert np.all(res.relevance * np.sign(z)[:, None, None, None] >= 0)   # every input shares the output's sign
