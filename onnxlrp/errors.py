"""Errors that onnxlrp raises on purpose: each carries a message a user can act on."""


class OnnxLrpError(Exception):
    """Base class: a problem with the model, the input or the options, explained in one line."""


class ModelLoadError(OnnxLrpError):
    """The model file cannot be read or is not a valid ONNX model."""


class UnsupportedModelError(OnnxLrpError):
    """The model uses a construct onnxlrp cannot explain (and says how to work around it)."""


class UnsupportedOpError(UnsupportedModelError):
    """A node whose op has no relevance handler."""

    def __init__(self, op_type: str, node_name: str, detail: str = ""):
        self.op_type = op_type
        self.node_name = node_name
        remedy = (
            f"to go on, declare it: composites.LayerMap([(\"{op_type}\", rules.Pass())], base=...) passes relevance "
            f"through unchanged, rules.Norm() instead treats it as a linear map of its first input "
            f"(command line: --declare {op_type}=pass or --declare {op_type}=linear)"
        )
        message = f"op {op_type} (node '{node_name}') is not supported"
        if detail:
            message += f": {detail}"
        message += f"; {remedy}"
        super().__init__(message)


class InputError(OnnxLrpError):
    """The data given to explain() does not fit the model."""
