"""The modified-gradient form of LRP for transformers (AttnLRP, CP-LRP; docs/rules.md "Transformers").

Relevance at a tensor t is R_t = t * g_t, g a modified gradient: one VJP handler per op family
(linear, arithmetic, softmax, norm, nonlinear, routing), the graph patterns they need (patterns),
where the gradient starts (start), and com.microsoft ops de-fused first (defuse)."""
from .compiler import compile_gradient_explainer

__all__ = ["compile_gradient_explainer"]
