"""The op registry: every op family declared once, with its traits and the functions that send relevance back
through its nodes. A duplicate registration is an error.

A family may give:
  kind       the kind of layer its nodes are (asked of the composite for a rule: "conv", "dense", "affine",
             "join", "pool", "softmax", "norm", "nonlinear", "bilinear", "gate"), or a function of the node
             that tells (Mul is affine, a gate, bilinear or a normaliser, depending on its operands); None for
             ops that only move elements and take no rule
  vjp        J^T: the seeds at the node's outputs mapped back to each input, with whatever the rule holds
             constant held constant (the modified gradient). It serves the Norm and Epsilon rules in both forms
             (gradient: g_x = J^T g_y; relevance: R_x = x * J^T [R_y / stab(y)]) and the uniform rule (times
             its share)
  relevance  a relevance-form handler of the family's own, for rules that are not a plain J^T (ZPlus,
             Gamma, Flat on weighted layers; deep Taylor's p-norm pooling)
  routes     the op only moves, copies or selects elements: its J^T routes relevance R and gradient g alike
  holds      the inputs or outputs of a node that its rule holds constant (a gate under rules.Constant, a
             normalising divisor): no relevance flows through them
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

KINDS = ("conv", "dense", "affine", "join", "pool", "softmax", "norm", "nonlinear", "bilinear", "gate")
WEIGHTED_KINDS = ("conv", "dense")


@dataclass
class Family:
    name: str
    op_types: tuple[str, ...]
    kind: str | Callable | None = None
    vjp: Callable | None = None
    relevance: Callable | None = None
    routes: bool = False
    holds: Callable | None = None

    def kind_of(self, node, analysis) -> str | None:
        return self.kind(node, analysis) if callable(self.kind) else self.kind


FAMILIES: dict[str, Family] = {}


def family(name: str, *op_types: str, kind: str | Callable | None = None, routes: bool = False,
           domain: str = "") -> Family:
    """Declare an op family (of ONNX's default domain unless `domain`, e.g. com.microsoft; op type "*": every
    op of that domain, e.g. onnxlrp's own functions); attach its functions with `@vjp(f)` and
    `@relevance(f)`."""
    declared = Family(name, op_types, kind=kind, routes=routes)
    for op in op_types:
        key = _key(op, domain)
        if key in FAMILIES:
            raise RuntimeError(f"op {key} is already declared in family '{FAMILIES[key].name}'")
        FAMILIES[key] = declared
    return declared


def _key(op_type: str, domain: str) -> str:
    return op_type if domain in ("", "ai.onnx") else f"{domain}.{op_type}"


def vjp(declared: Family):
    def attach(function: Callable) -> Callable:
        if declared.vjp is not None:
            raise RuntimeError(f"family '{declared.name}' already has a VJP ({declared.vjp.__name__})")
        declared.vjp = function
        return function
    return attach


def relevance(declared: Family):
    def attach(function: Callable) -> Callable:
        if declared.relevance is not None:
            raise RuntimeError(f"family '{declared.name}' already has a relevance handler")
        declared.relevance = function
        return function
    return attach


def family_of(op_type: str, domain: str = "") -> Family | None:
    return FAMILIES.get(_key(op_type, domain)) or FAMILIES.get(_key("*", domain))
