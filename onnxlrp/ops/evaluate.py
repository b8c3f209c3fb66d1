"""Evaluate one op on constant inputs at compile time (input-independent terms such as Flat's fan-in
or ZBox's bounds), with the same onnxruntime kernels the explainer will run on."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import helper, numpy_helper


def evaluate_node(op_type: str, inputs: list[np.ndarray | None], opset: int = 17, **attrs) -> np.ndarray:
    names, feeds, value_infos = [], {}, []
    for i, array in enumerate(inputs):
        if array is None:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        array = np.ascontiguousarray(array)
        feeds[name] = array
        value_infos.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype),
                                                         array.shape))
    node = helper.make_node(op_type, names, ["out"], **attrs)
    first = next(a for a in inputs if a is not None)
    out = helper.make_tensor_value_info("out", helper.np_dtype_to_tensor_dtype(np.asarray(first).dtype), None)
    graph = helper.make_graph([node], "evaluate", value_infos, [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


__all__ = ["evaluate_node", "numpy_helper"]
