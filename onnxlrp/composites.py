"""Composites: which rule each layer gets. They map layers to rules and do nothing else.

A layer is described by `Layer` (node name, op type, kind, position in execution order from the explained
input). Its kind says what it is:
  "conv", "dense"  weighted layers (Conv, ConvTranspose; Gemm, MatMul with a constant operand): the rules of
                   onnxlrp.rules; the composites' own choice, with Zennit's names and parameters. The "first
                   layer" of the Flat composites is the first weighted layer, that of EpsilonGammaBox the first
                   convolution, as in Zennit.
  "affine"         an element-wise affine step that could not be folded into a layer (an unfolded BatchNorm,
                   a bias, a mask, a scaling): Epsilon; right at a float input (input normalisation): Pass
  "join"           a sum of computed tensors (residual connections): Norm
  "pool"           average pooling, reductions, resizing: Norm
  "softmax"        Norm (its unchanged gradient), or Constant (CP-LRP)
  "norm"           LayerNorm / RMSNorm with the normaliser held constant, a division by a norm: Norm
  "nonlinear"      element-wise non-linearities and x * h(x) blocks: Pass (the identity rule)
  "bilinear"       a product of two computed tensors (Q K^T, P V): UniformShare (each operand half)
  "gate"           a product whose one operand gates the other (squeeze-excitation, SwiGLU's activation
                   branch): Constant (the gate held constant); AttnLRP: UniformShare
Where a composite says nothing about a kind, these defaults hold (docs/rules.md, "One compiler").

A composite's `form` says how its rules are best computed: "relevance" (Zennit's composites: the rules in
relevance form) or "gradient" (AttnLRP, CP-LRP: LXT's modified gradient, R = t * g); the numbers are those of
the rules either way, up to the stabiliser.
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
    op_type: str       # Conv, ConvTranspose, Gemm, Softmax, ...
    kind: str          # "conv", "dense", or a block kind (see above)
    index: int         # position among weighted layers, 0 = closest to the input; -1 for the other kinds
    count: int         # number of weighted layers
    conv_index: int | None = None  # position among convolutions, None for the other kinds
    at_input: bool = False         # an affine step right at a float input (input normalisation)

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @property
    def is_last(self) -> bool:
        return self.index == self.count - 1


# the rules each kind of layer takes (weighted kinds take every rule)
ACCEPTED = {"softmax": (R.Norm, R.Epsilon, R.Constant, R.Pass), "bilinear": (R.UniformShare, R.Pass),
            "gate": (R.UniformShare, R.Constant, R.Pass), "nonlinear": (R.Pass,), "norm": (R.Norm, R.Epsilon, R.Pass),
            "join": (R.Norm, R.Epsilon, R.Pass), "pool": (R.Norm, R.Epsilon, R.Pass),
            "affine": (R.Epsilon, R.Norm, R.Pass)}
BLOCK_RULES = {"softmax": R.Norm(), "bilinear": R.UniformShare(), "gate": R.Constant(), "nonlinear": R.Pass(),
               "norm": R.Norm(), "join": R.Norm(), "pool": R.Norm(), "affine": R.Epsilon()}


class Composite:
    """Base class. `layer_rule(layer)` gives a weighted layer's rule; the other kinds get `block_rules`
    (BLOCK_RULES unless a composite changes them). `rule_for_op` may set the treatment of an op without a kind
    (return None to keep docs/rules.md's default)."""

    form = "relevance"
    block_rules = BLOCK_RULES

    def rule_for(self, layer: Layer) -> Rule:
        if layer.kind in ("conv", "dense"):
            return self.layer_rule(layer)
        if layer.kind == "affine" and layer.at_input:
            return R.Pass()
        return self.block_rules[layer.kind]

    def layer_rule(self, layer: Layer) -> Rule:
        raise NotImplementedError

    def rule_for_op(self, op_type: str, node_name: str) -> Rule | None:
        return None

    def declares(self, layer: Layer) -> bool:
        """Does a declaration (a LayerMap entry) set this layer's rule, rather than the composite's choice?"""
        return False

    def prepare(self, layers: list[Layer]) -> None:
        """Called once with every layer of the model before any rule is asked for."""

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

    def layer_rule(self, layer: Layer) -> Rule:
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

    def layer_rule(self, layer):
        return R.ZPlus(stabilizer=self.stabilizer, zero_bias=self.zero_bias)


class Uniform(Composite):
    """The same rule for every weighted layer, e.g. Uniform(rules.Epsilon(0)) for LRP-0."""

    def __init__(self, rule: Rule):
        self.rule = rule

    def layer_rule(self, layer):
        return self.rule


class LayerDepth(Composite):
    """The per-depth recipe of the LRP overview (Montavon et al., 2019): LRP-0 for the dense layers at
    the top, LRP-epsilon for the upper half of the convolutions, LRP-gamma for the lower half, and z^B
    on the first convolution when the input bounds are given (else Flat)."""

    def __init__(self, low=None, high=None, epsilon=0.25, gamma=0.25, lower_fraction=0.5, stabilizer=1e-6):
        self.low, self.high = low, high
        self.epsilon, self.gamma, self.lower_fraction, self.stabilizer = epsilon, gamma, lower_fraction, stabilizer
        self._n_conv = None

    def layer_rule(self, layer):
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
    """Match by op type ("Conv", "Softmax"), kind ("conv", "softmax") or exact node name."""
    return lambda layer: layer.op_type in names or layer.kind in names or layer.name in names


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

    Selectors: an op type ("Conv", "Gemm", "Softmax"), a kind ("conv", "dense", "softmax", "gate", ...), a node
    name, "first", "last", a range of weighted-layer indices, a glob or compiled regex on node names, or any
    callable(Layer) -> bool. An entry for an op type or node name overrides the op's built-in treatment, also of
    ops without a kind (e.g. ("MyOp", rules.Pass()) passes relevance through an op onnxlrp does not know).
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
            if layer.kind not in ("conv", "dense"):
                return super().rule_for(layer)
            raise LookupError(f"no LayerMap entry matches layer '{layer.name}' ({layer.op_type}) and there is no base")
        return self.base.rule_for(layer)

    def declares(self, layer):
        return any(select(layer) for select, _ in self._compiled) or (self.base is not None
                                                                      and self.base.declares(layer))

    def rule_for_op(self, op_type_name, node_name):
        for spec, rule in self.entries:
            if spec in (op_type_name, node_name) or (isinstance(spec, str) and any(c in spec for c in "*?[")
                                                      and fnmatch.fnmatchcase(node_name, spec)):
                return rule
        return self.base.rule_for_op(op_type_name, node_name) if self.base is not None else None

    def prepare(self, layers):
        if self.base is not None:
            self.base.prepare(layers)

    @property
    def form(self) -> str:
        return self.base.form if self.base is not None else "relevance"


class AttnLRP(Composite):
    """AttnLRP (Achtibat et al., ICML 2024), in LXT's modified-gradient form (docs/rules.md): the kinds' default
    rules, with the uniform rule on gates too (gate * up: each operand half). `linear` is the rule of the dense
    layers (default Epsilon: their plain gradient, as in LXT's efficient mode), `conv` that of convolutions (a
    ViT's patch embedding, a CNN's layers; default: `linear`); Gamma(gamma) on both gives LXT's ViT recipe,
    and `gamma` > 0 is short for it (linear=Gamma(gamma)). A LayerMap over it changes any kind by name
    (("softmax", rules.Constant()) is CP-LRP's)."""

    form = "gradient"
    block_rules = {**BLOCK_RULES, "gate": R.UniformShare()}

    def __init__(self, linear: Rule | None = None, conv: Rule | None = None, gamma: float = 0.0):
        if gamma and linear is not None:
            raise ValueError("give either linear= or gamma=, not both")
        self.linear = linear if linear is not None else R.Gamma(gamma=gamma) if gamma else R.Epsilon()
        self.conv = conv

    def layer_rule(self, layer):
        return (self.conv or self.linear) if layer.kind == "conv" else self.linear


class CPLRP(AttnLRP):
    """CP-LRP (Ali et al., ICML 2022): as AttnLRP, but the attention probabilities and the gates are
    constants, so relevance flows through the values only (conservative)."""

    block_rules = {**AttnLRP.block_rules, "softmax": R.Constant(), "gate": R.Constant()}


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


__all__ = ["Layer", "Composite", "ACCEPTED", "BLOCK_RULES", "EpsilonPlus", "EpsilonPlusFlat", "EpsilonAlpha2Beta1",
           "EpsilonAlpha2Beta1Flat", "EpsilonGammaBox", "ExcitationBackprop", "Uniform", "LayerDepth",
           "LayerMap", "AttnLRP", "CPLRP", "op_type", "first", "last", "index_range", "name_matches", "get", "NAMED"]
