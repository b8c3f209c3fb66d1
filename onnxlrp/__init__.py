"""onnxlrp: Layer-wise Relevance Propagation compiled to ONNX, run with onnxruntime."""
__version__ = "0.1.0"

from . import composites, rules  # noqa: E402
from .compiler import compile  # noqa: E402,A001
from .errors import OnnxLrpError  # noqa: E402
from .generation import Generation  # noqa: E402
from .runtime import Explainer, Explanation  # noqa: E402

__all__ = ["Explainer", "Explanation", "Generation", "compile", "composites", "rules", "OnnxLrpError", "__version__"]
