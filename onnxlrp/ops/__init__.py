"""Relevance handlers, one module per op family; importing this package registers them all."""
from . import activation, conv, dense, join, pool, reduce, resample, select, shape  # noqa: F401  (registration side effects)
from .registry import HANDLERS, WEIGHTED, handler_for, register

__all__ = ["HANDLERS", "WEIGHTED", "handler_for", "register"]
