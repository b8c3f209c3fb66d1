"""Composites: which rule each weighted layer gets. They map layers to rules and do nothing else.

Names and parameters follow Zennit. A layer is described by `Layer` (op type, kind, position in
execution order from the explained input, node name); the "first layer" of the Flat composites is
the first weighted layer, that of EpsilonGammaBox the first convolution, as in Zennit.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from . import rules as R
from .rules import Rule


@dataclass(frozen=True)
class Layer:
    name: str          # the forward node's name
    op_type: str       # Conv, ConvTranspose, Gemm
    kind: str          # "conv" or "dense"
    index: int         # position among weighted layers, 0 = closest to the input
    count: int         # number of weighted layers
    conv_index: int | None = None  # position among convolutions, None for dense layers

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @property
    def is_last(self) -> bool:
        return self.index == self.count - 1


class Composite:
    """Base class. `rule_for(layer)` gives a weighted layer's rule; `rule_for_op` may override the
    default treatment of a weight-free node (return None to keep docs/rules.md's default)."""

    def rule_for(self, layer: Layer) -> Rule:
        raise NotImplementedError

    def rule_for_op(self, op_type: str, node_name: str) -> Rule | None:
        return None

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={_short(v)}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def _short(value):
    if isinstance(value, np.ndarray):
        return f"array{tuple(value.shape)}" if value.size > 1 else f"{float(value):g}"
    return repr(value)


class _ConvDense(Composite):
    """Shared shape of Zennit's explicit composites: conv rule, dense rule, optional first-layer rule."""

    first_kind = "any"  # which layers count for "first": any weighted layer, or convolutions only

    def conv_rule(self) -> Rule:
        raise NotImplementedError

    def dense_rule(self) -> Rule:
        return R.Epsilon(epsilon=self.epsilon, zero_bias=self.zero_bias)

    def first_rule(self) -> Rule | None:
        return None

    def rule_for(self, layer: Layer) -> Rule:
        first = self.first_rule()
        if first is not None:
            is_first = layer.is_first if self.first_kind == "any" else layer.conv_index == 0
            if is_first:
                return first
        return self.conv_rule() if layer.kind == "conv" else self.dense_rule()


class EpsilonPlus(_ConvDense):
    def __init__(self, epsilon=1e-6, stabilizer=1e-6, zero_bias=False):
        self.epsilon, self.stabilizer, self.zero_bias = epsilon, stabilizer, zero_bias

    def conv_rule(self):
        return R.ZPlus(stabilizer=self.stabilizer, zero_bias=self.zero_bias)


class EpsilonPlusFlat(EpsilonPlus):
    def first_rule(self):
        return R.Flat(stabilizer=self.stabilizer)


class EpsilonAlpha2Beta1(_ConvDense):
    def __init__(self, epsilon=1e-6, stabilizer=1e-6, zero_bias=False):
        self.epsilon, self.stabilizer, self.zero_bias = epsilon, stabilizer, zero_bias

    def conv_rule(self):
        return R.AlphaBeta(alpha=2.0, beta=1.0, stabilizer=self.stabilizer, zero_bias=self.zero_bias)


class EpsilonAlpha2Beta1Flat(EpsilonAlpha2Beta1):
    def first_rule(self):
        return R.Flat(stabilizer=self.stabilizer)


class EpsilonGammaBox(_ConvDense):
    first_kind = "conv"

    def __init__(self, low, high, epsilon=1e-6, gamma=0.25, stabilizer=1e-6, zero_bias=False):
        self.low, self.high = low, high
        self.epsilon, self.gamma, self.stabilizer, self.zero_bias = epsilon, gamma, stabilizer, zero_bias

    def conv_rule(self):
        return R.Gamma(gamma=self.gamma, stabilizer=self.stabilizer, zero_bias=self.zero_bias)

    def first_rule(self):
        return R.ZBox(low=self.low, high=self.high, stabilizer=self.stabilizer, zero_bias=self.zero_bias)


class ExcitationBackprop(Composite):
    def __init__(self, stabilizer=1e-6, zero_bias=False):
        self.stabilizer, self.zero_bias = stabilizer, zero_bias

    def rule_for(self, layer):
        return R.ZPlus(stabilizer=self.stabilizer, zero_bias=self.zero_bias)


class Uniform(Composite):
    """The same rule for every weighted layer, e.g. Uniform(rules.Epsilon(0)) for LRP-0."""

    def __init__(self, rule: Rule):
        self.rule = rule

    def rule_for(self, layer):
        return self.rule


class LayerDepth(Composite):
    """The per-depth recipe of the LRP overview (Montavon et al., 2019): LRP-0 for the dense layers at
    the top, LRP-epsilon for the upper half of the convolutions, LRP-gamma for the lower half, and z^B
    on the first convolution when the input bounds are given (else Flat)."""

    def __init__(self, low=None, high=None, epsilon=0.25, gamma=0.25, lower_fraction=0.5, stabilizer=1e-6):
        self.low, self.high = low, high
        self.epsilon, self.gamma, self.lower_fraction, self.stabilizer = epsilon, gamma, lower_fraction, stabilizer
        self._n_conv = None

    def rule_for(self, layer):
        if layer.kind == "dense":
            return R.Epsilon(epsilon=0.0)
        if layer.conv_index == 0:
            if self.low is not None and self.high is not None:
                return R.ZBox(low=self.low, high=self.high, stabilizer=self.stabilizer)
            return R.Flat(stabilizer=self.stabilizer)
        n_conv = self._n_conv or layer.count
        if layer.conv_index < self.lower_fraction * n_conv:
            return R.Gamma(gamma=self.gamma, stabilizer=self.stabilizer)
        return R.Epsilon(epsilon=self.epsilon)

    def prepare(self, layers: list[Layer]) -> None:
        self._n_conv = sum(1 for layer in layers if layer.kind == "conv")


# ---- LayerMap: rules by op type, position, index range or node-name pattern; first match wins ----

Selector = Callable[[Layer], bool]


def op_type(*names: str) -> Selector:
    """Match by op type (Conv, ConvTranspose, Gemm) or kind ("conv", "dense")."""
    return lambda layer: layer.op_type in names or layer.kind in names


def first() -> Selector:
    return lambda layer: layer.is_first


def last() -> Selector:
    return lambda layer: layer.is_last


def index_range(start: int, stop: int | None = None) -> Selector:
    """Weighted layers with start <= index < stop (Python range semantics; negative counts from the top)."""
    def select(layer: Layer) -> bool:
        lo = start if start >= 0 else layer.count + start
        hi = layer.count if stop is None else (stop if stop >= 0 else layer.count + stop)
        return lo <= layer.index < hi
    return select


def name_matches(pattern: str) -> Selector:
    """Node names matching a glob (`features.1*`) or, if given as re.compile(...), a regular expression."""
    if isinstance(pattern, re.Pattern):
        return lambda layer: bool(pattern.search(layer.name))
    return lambda layer: fnmatch.fnmatchcase(layer.name, pattern)


def _as_selector(spec) -> Selector:
    if callable(spec):
        return spec
    if isinstance(spec, str):
        if spec == "first":
            return first()
        if spec == "last":
            return last()
        if any(ch in spec for ch in "*?["):
            return name_matches(spec)
        return op_type(spec)
    if isinstance(spec, range):
        return index_range(spec.start, spec.stop)
    if isinstance(spec, re.Pattern):
        return name_matches(spec)
    raise TypeError(f"cannot use {spec!r} as a layer selector")


class LayerMap(Composite):
    """Rules from an ordered list of (selector, rule); the first matching entry wins, else `base`.

    Selectors: an op type ("Conv", "Gemm") or kind ("conv", "dense"), "first", "last", a range of
    weighted-layer indices, a glob or compiled regex on node names, or any callable(Layer) -> bool.
    Entries whose selector is the op type of a weight-free node (e.g. ("MyOp", rules.Pass())) set
    that node's treatment.
    """

    def __init__(self, entries: Iterable[tuple[object, Rule]], base: Composite | None = None):
        self.entries = list(entries)
        self.base = base
        self._compiled = [(_as_selector(spec), rule) for spec, rule in self.entries]

    def rule_for(self, layer):
        for select, rule in self._compiled:
            if select(layer):
                return rule
        if self.base is None:
            raise LookupError(f"no LayerMap entry matches layer '{layer.name}' ({layer.op_type}) and there is no base")
        return self.base.rule_for(layer)

    def rule_for_op(self, op_type_name, node_name):
        for spec, rule in self.entries:
            if spec == op_type_name or (isinstance(spec, str) and any(c in spec for c in "*?[")
                                         and fnmatch.fnmatchcase(node_name, spec)):
                return rule
        return self.base.rule_for_op(op_type_name, node_name) if self.base is not None else None

    def prepare(self, layers):
        if self.base is not None and hasattr(self.base, "prepare"):
            self.base.prepare(layers)

    @property
    def gradient_form(self) -> bool:
        """A LayerMap over AttnLRP / CP-LRP compiles in their modified-gradient form."""
        return bool(getattr(self.base, "gradient_form", False))


class AttnLRP(Composite):
    """AttnLRP (Achtibat et al., ICML 2024) for transformers, in LXT's modified-gradient form (docs/rules.md).

    Besides the weighted kinds "dense" and "conv", a transformer's layers come in these kinds, each with
    its rule here (a LayerMap can change them by kind or node name):
      "softmax"    Norm: the Softmax's own Jacobian (its unchanged gradient), or Constant (CP-LRP)
      "bilinear"   UniformShare: each operand of Q K^T, P V gets half
      "gate"       a bilinear Mul whose one operand went through a non-linearity (gate * up): UniformShare,
                   or Constant (CP-LRP: the gate is a constant)
      "nonlinear"  Pass: the identity rule on GELU, SiLU, Tanh, ... (R_x = R_y)
      "norm"       Norm: LayerNorm / RMSNorm with the normaliser held constant, a linear map
    `linear` is the rule of the dense layers (default Epsilon: their plain gradient, as in LXT's
    efficient mode), `conv` that of convolutions (the ViT patch embedding; default: `linear`);
    Gamma(gamma) on both gives LXT's ViT recipe."""

    gradient_form = True
    BLOCK_RULES = {"softmax": R.Norm(), "bilinear": R.UniformShare(), "gate": R.UniformShare(),
                   "nonlinear": R.Pass(), "norm": R.Norm()}

    def __init__(self, linear: Rule | None = None, conv: Rule | None = None):
        self.linear = linear if linear is not None else R.Epsilon()
        self.conv = conv

    def rule_for(self, layer):
        if layer.kind == "conv":
            return self.conv or self.linear
        if layer.kind == "dense":
            return self.linear
        return self.BLOCK_RULES[layer.kind]


class CPLRP(AttnLRP):
    """CP-LRP (Ali et al., ICML 2022): as AttnLRP, but the attention probabilities and the gates are
    constants, so relevance flows through the values only (conservative)."""

    BLOCK_RULES = {**AttnLRP.BLOCK_RULES, "softmax": R.Constant(), "gate": R.Constant()}


NAMED = {
    "attn_lrp": AttnLRP,
    "cp_lrp": CPLRP,
    "epsilon_plus": EpsilonPlus,
    "epsilon_plus_flat": EpsilonPlusFlat,
    "epsilon_alpha2_beta1": EpsilonAlpha2Beta1,
    "epsilon_alpha2_beta1_flat": EpsilonAlpha2Beta1Flat,
    "epsilon_gamma_box": EpsilonGammaBox,
    "excitation_backprop": ExcitationBackprop,
    "layer_depth": LayerDepth,
    "lrp0": lambda: Uniform(R.Epsilon(epsilon=0.0)),
    "epsilon": lambda epsilon=1e-6: Uniform(R.Epsilon(epsilon=epsilon)),
    "zplus": lambda: Uniform(R.ZPlus()),
}


def get(name: str | Composite | None, **params) -> Composite:
    """A composite from its snake_case name (or a Composite, returned as it is)."""
    if name is None:
        return EpsilonPlusFlat()
    if isinstance(name, Composite):
        return name
    key = name.strip().lower().replace("-", "_")
    if key not in NAMED:
        raise ValueError(f"unknown composite '{name}'; known: {', '.join(sorted(NAMED))}")
    return NAMED[key](**params)


__all__ = ["Layer", "Composite", "EpsilonPlus", "EpsilonPlusFlat", "EpsilonAlpha2Beta1",
           "EpsilonAlpha2Beta1Flat", "EpsilonGammaBox", "ExcitationBackprop", "Uniform", "LayerDepth",
           "LayerMap", "AttnLRP", "CPLRP", "op_type", "first", "last", "index_range", "name_matches", "get", "NAMED"]
