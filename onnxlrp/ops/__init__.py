"""The op families, one module each; importing this package declares them all in the registry."""
from . import activation, arithmetic, conv, dense, norm, pool, quantized, reduce, resample, routing, softmax  # noqa: F401
from .registry import FAMILIES, Family, family_of

__all__ = ["FAMILIES", "Family", "family_of"]
