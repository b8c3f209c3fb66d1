"""Element-wise non-linearities (kind "nonlinear"): the identity rule by default, rules.Pass (docs/rules.md).
In relevance form R_x = R_y (Zennit's Pass); in gradient form g_x = g_y f(x) / x (LXT's identity rule). The
compiler's walk applies it (onnxlrp/compiler/walk.py), also to whole blocks x * h(x) found by the analysis
(SiLU, GELU chains, Mish), whose x is the block's input."""
from __future__ import annotations

from .registry import family

NONLINEAR_OPS = ("Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Clip", "Elu", "Selu", "Celu", "Softplus",
                 "Softsign", "HardSigmoid", "HardSwish", "Gelu", "Mish", "ThresholdedRelu", "Erf", "Abs",
                 "Swish", "LRN")
NONLINEAR = family("element-wise non-linearity", *NONLINEAR_OPS, kind="nonlinear")
