"""The modified-gradient registry: one VJP handler per op family, looked up by op type."""
from __future__ import annotations

from typing import Callable

VJPS: dict[str, Callable] = {}


def register_vjp(*op_types: str):
    def decorate(handler: Callable) -> Callable:
        for op in op_types:
            if op in VJPS:
                raise RuntimeError(f"a gradient handler for {op} is already registered ({VJPS[op].__name__})")
            VJPS[op] = handler
        return handler
    return decorate


def vjp_for(op_type: str) -> Callable | None:
    return VJPS.get(op_type)
