"""Fold element-wise affine steps with constant operands into the neighbouring Conv or Gemm.

Exporters split what is one layer for LRP into several nodes: a Conv and its bias Add (paddle2onnx),
a BatchNorm decomposed into Mul and Add (tf2onnx, hand-written graphs), input normalisation
(x - mean) / std in front of the first layer. Folded, they become the layer's own weights and bias,
which is what Zennit sees in the framework model.

- after a layer (y = layer(x) op c, c per output channel): always exact.
- before a layer (layer(x op c), c per input channel): exact for scalings; for shifts only when the
  layer does not pad, because the padded zeros would otherwise change meaning.
What cannot be folded stays and passes relevance through (docs/rules.md).
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .names import unique_name

AFFINE_OPS = ("Add", "Sub", "Mul", "Div")
LAYER_OPS = ("Conv", "Gemm")


def fold_affine(graph: gs.Graph) -> bool:
    """Fold until nothing more folds; True if anything changed."""
    changed_any = False
    while True:
        changed = False
        for node in list(graph.nodes):
            if node.op in LAYER_OPS and weights_constant(node):
                changed |= _fold_after(graph, node) or _fold_before(graph, node)
        if not changed:
            break
        changed_any = True
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return changed_any


def weights_constant(layer: gs.Node) -> bool:
    """A Conv or canonical (transB=1) Gemm whose weight and bias are constants."""
    if layer.op == "Gemm" and int(layer.attrs.get("transB", 0)) != 1:
        return False  # dense layers are normalised to transB=1 first
    if len(layer.inputs) < 2 or not isinstance(layer.inputs[1], gs.Constant):
        return False
    return len(layer.inputs) < 3 or isinstance(layer.inputs[2], gs.Constant)


def _split_affine(node: gs.Node, tensor: gs.Tensor):
    """(constant operand, is the tensor the first operand) of an affine node with one constant, else None."""
    if node.op not in AFFINE_OPS or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if a is tensor and isinstance(b, gs.Constant):
        return b.values, True
    if b is tensor and isinstance(a, gs.Constant):
        return a.values, False
    return None


def _per_channel(constant: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """The constant as a vector over axis 1 of a rank-`rank` tensor, if it broadcasts only along it."""
    if constant.ndim > rank:
        return None
    shape = (1,) * (rank - constant.ndim) + constant.shape
    if shape[0] != 1 or any(d != 1 for d in shape[2:]) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(constant.reshape(-1).astype(np.float64), (channels,)).copy()


def _as_scale_shift(op: str, c: np.ndarray, tensor_first: bool):
    """op(t, c) = scale * t + shift, element-wise; None where it is not affine in t."""
    if op == "Add":
        return np.ones_like(c), c
    if op == "Sub":
        return (np.ones_like(c), -c) if tensor_first else (-np.ones_like(c), c)
    if op == "Mul":
        return c, np.zeros_like(c)
    if op == "Div" and tensor_first and np.all(c != 0):
        return 1.0 / c, np.zeros_like(c)
    return None


def _bias(layer: gs.Node, n_out: int) -> np.ndarray:
    if len(layer.inputs) > 2:
        return np.broadcast_to(layer.inputs[2].values.astype(np.float64).reshape(-1), (n_out,)).copy()
    return np.zeros(n_out)


def _set_params(graph: gs.Graph, layer: gs.Node, weight: np.ndarray, bias: np.ndarray, tag: str) -> None:
    dtype = layer.inputs[1].values.dtype
    layer.inputs[1] = gs.Constant(unique_name(graph, f"{layer.name}_W_{tag}"), weight.astype(dtype))
    bias_const = gs.Constant(unique_name(graph, f"{layer.name}_b_{tag}"), bias.astype(dtype))
    if len(layer.inputs) > 2:
        layer.inputs[2] = bias_const
    else:
        layer.inputs.append(bias_const)


def _fold_after(graph: gs.Graph, layer: gs.Node) -> bool:
    y = layer.outputs[0]
    if len(y.outputs) != 1 or y in graph.outputs:
        return False
    node = y.outputs[0]
    split = _split_affine(node, y)
    if split is None:
        return False
    weight = layer.inputs[1].values
    rank = len(y.shape) if y.shape is not None else (2 if layer.op == "Gemm" else weight.ndim)
    c = _per_channel(split[0], rank, weight.shape[0])
    affine = _as_scale_shift(node.op, c, split[1]) if c is not None else None
    if affine is None:
        return False
    scale_after(graph, layer, node, *affine, "folded")
    return True


def scale_after(graph: gs.Graph, layer: gs.Node, node: gs.Node, scale: np.ndarray, shift: np.ndarray,
                tag: str) -> None:
    """Fold `node` = scale * layer(x) + shift (per output channel) into `layer`, which takes its output."""
    weight = layer.inputs[1].values
    n_out = weight.shape[0]
    new_weight = weight.astype(np.float64) * scale.reshape((n_out,) + (1,) * (weight.ndim - 1))
    _set_params(graph, layer, new_weight, _bias(layer, n_out) * scale + shift, tag)
    layer.outputs = [node.outputs[0]]
    node.outputs.clear()


def _fold_before(graph: gs.Graph, layer: gs.Node) -> bool:
    x = layer.inputs[0]
    if not x.inputs or len(x.outputs) != 1 or x in graph.outputs:
        return False
    node = x.inputs[0]
    split = _split_affine(node, node.inputs[0] if not isinstance(node.inputs[0], gs.Constant) else node.inputs[1])
    if split is None:
        return False
    weight = layer.inputs[1].values
    n_out = weight.shape[0]
    group = int(layer.attrs.get("group", 1)) if layer.op == "Conv" else 1
    n_in = weight.shape[1] * group
    rank = len(x.shape) if x.shape is not None else (2 if layer.op == "Gemm" else weight.ndim)
    c = _per_channel(split[0], rank, n_in)
    affine = _as_scale_shift(node.op, c, split[1]) if c is not None else None
    if affine is None:
        return False
    scale, shift = affine
    if np.any(shift != 0) and layer.op == "Conv" and any(int(p) for p in layer.attrs.get("pads", [])):
        return False
    # per (output channel, input channel of its group)
    per_in = weight.shape[1]
    rows = (np.arange(n_out) // (n_out // group))[:, None] * per_in + np.arange(per_in)[None, :]
    expand = (n_out, per_in) + (1,) * (weight.ndim - 2)
    w64 = weight.astype(np.float64)
    new_weight = w64 * scale[rows].reshape(expand)
    new_bias = _bias(layer, n_out) + (w64 * shift[rows].reshape(expand)).reshape(n_out, -1).sum(axis=1)
    _set_params(graph, layer, new_weight, new_bias, "prefolded")
    layer.inputs[0] = next(t for t in node.inputs if not isinstance(t, gs.Constant))
    node.outputs.clear()
    return True
