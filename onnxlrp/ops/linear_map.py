"""Any op declared Norm() in a LayerMap, without a handler of its own, treated as a linear map of its
first input: R_x = x * J^T [R / stab(y)] (docs/rules.md's Norm).

J is probed at compile time by running the node on unit vectors, so it only suits ops whose
per-sample input and output are small (the dense J must fit in LINEAR_MAP_MAX_ENTRIES). The node is
checked to be linear first (f(a u + b v) = a f(u) + b f(v) on random vectors); if it is not, the
error says so.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from ..errors import UnsupportedOpError
from .context import Context

LINEAR_MAP_MAX_ENTRIES = 1 << 24


def _run_node(ctx: Context, x: np.ndarray) -> np.ndarray:
    """The forward node alone, with its constant inputs, on a batch of inputs."""
    inputs, inits = ["x"], []
    for i, name in enumerate(ctx.node.input[1:], start=1):
        value = ctx.const(i) if name else None
        if name and value is None:
            raise UnsupportedOpError(ctx.node.op_type, ctx.name, f"declared Norm, but its input {i} is computed at "
                                     "run time; only constant extra inputs can be probed")
        inputs.append(f"c{i}" if name else "")
        if name:
            inits.append(numpy_helper.from_array(value, f"c{i}"))
    node = helper.make_node(ctx.node.op_type, inputs, ["y"], domain=ctx.node.domain, **{
        a.name: helper.get_attribute_value(a) for a in ctx.node.attribute})
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=list(ctx.graph.model.opset_import))
    model.ir_version = ctx.graph.model.ir_version
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.astype(np.float32)})[0]


def linear_map(ctx: Context, eps: float):
    x_shape, y_shape = ctx.static_shape(ctx.x()), ctx.static_shape(ctx.y())
    n_in, n_out = int(np.prod(x_shape[1:])), int(np.prod(y_shape[1:]))
    if n_in * n_out > LINEAR_MAP_MAX_ENTRIES:
        raise UnsupportedOpError(ctx.node.op_type, ctx.name, f"declared Norm, but its Jacobian ({n_out} x {n_in}) is "
                                 "too large to probe; declare it Pass if it keeps the shape")
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(2, 1) + tuple(x_shape[1:]))
    if not np.allclose(_run_node(ctx, 2 * u - 3 * v), 2 * _run_node(ctx, u) - 3 * _run_node(ctx, v), atol=1e-4,
                       rtol=1e-4):
        raise UnsupportedOpError(ctx.node.op_type, ctx.name, "declared Norm, but it is not a linear map of its first "
                                 "input; declare it Pass if it keeps the shape")
    basis = np.eye(n_in, dtype=np.float32).reshape((n_in,) + tuple(x_shape[1:]))
    jacobian = _run_node(ctx, basis).reshape(n_in, n_out)  # row i: the response to unit vector i, i.e. J^T
    b = ctx.b
    s = b.op("Reshape", [b.divide(ctx.R(), ctx.y(), eps), b.ints([0, -1])])
    back = b.op("MatMul", [s, b.const(np.ascontiguousarray(jacobian.T), hint="jacobian")])
    return [b.op("Mul", [ctx.x(), b.reshape_like(back, ctx.x())])] + [None] * (len(ctx.node.input) - 1)
