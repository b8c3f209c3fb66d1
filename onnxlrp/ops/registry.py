"""The op registry: one handler per op family, looked up by op type. A duplicate is an error."""
from __future__ import annotations

from typing import Callable

HANDLERS: dict[str, Callable] = {}
# op types whose node is a weighted layer (gets a rule from the composite), with their kind
WEIGHTED: dict[str, str] = {}


def register(*op_types: str, weighted: str | None = None):
    def decorate(handler: Callable) -> Callable:
        for op in op_types:
            if op in HANDLERS:
                raise RuntimeError(f"a relevance handler for {op} is already registered ({HANDLERS[op].__name__})")
            HANDLERS[op] = handler
            if weighted:
                WEIGHTED[op] = weighted
        return handler
    return decorate


def handler_for(op_type: str) -> Callable | None:
    return HANDLERS.get(op_type)
