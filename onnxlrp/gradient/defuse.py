"""De-fusing onnxruntime's com.microsoft transformer ops into standard ops (filled in below)."""
from __future__ import annotations

import onnx


def defuse_contrib_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    return model
