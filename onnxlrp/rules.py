"""LRP rules as data (see docs/rules.md).

A rule for a weighted layer z = W x + b is a list of *groups*. Each group sums a few *terms*
(an input modifier, a weight transform, a bias transform, a sign) into a denominator z_g, forms
s_g = gate * R / stab(z_g) and sends  coefficient * sum_t sign_t * input_t * W_t^T s_g  to the input.
How a Conv or a Gemm computes "W x" and "W^T s" lives in onnxlrp/ops; the rules never see an op.

    Epsilon:    one group  [(x, W, b)]
    ZPlus:      one group  [(x+, W+, b+), (x-, W-, -)]
    AlphaBeta:  alpha * [(x+, W+, b+), (x-, W-, -)]  -  beta * [(x+, W-, b-), (x-, W+, -)]
    Gamma:      [z>0] [(x+, W+gW+, b+gb+), (x-, W+gW-, -)]  +  [z<0] [(x+, W+gW-, b+gb-), (x-, W+gW+, -)]
    ZBox:       [(x, W, b), -(low, W+, b+), -(high, W-, b-)]      (the biases cancel)
    WSquare:    [(1, W*W, b*b)]
    Flat:       [(1, 1, -)]
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_STABILIZER = 1e-6


@dataclass(frozen=True)
class Transform:
    """A weight or bias transform, named so that it prints and compares as data."""

    kind: str  # identity | positive | negative | gamma_up | gamma_down | scaled_positive | square | ones
    gamma: float = 0.0

    def __call__(self, values: np.ndarray) -> np.ndarray:
        v = np.asarray(values, dtype=np.float64)
        if self.kind == "identity":
            return v
        if self.kind == "positive":
            return np.clip(v, 0.0, None)
        if self.kind == "negative":
            return np.clip(v, None, 0.0)
        if self.kind == "gamma_up":
            return v + self.gamma * np.clip(v, 0.0, None)
        if self.kind == "gamma_down":
            return v + self.gamma * np.clip(v, None, 0.0)
        if self.kind == "scaled_positive":
            return self.gamma * np.clip(v, 0.0, None)
        if self.kind == "square":
            return v * v
        if self.kind == "ones":
            return np.ones_like(v)
        raise ValueError(f"unknown transform {self.kind}")

    @property
    def nonnegative(self) -> bool:
        """Every transformed value is >= 0, whatever the weights."""
        return self.kind in ("positive", "square", "ones") or (self.kind == "scaled_positive" and self.gamma >= 0)

    def as_identity_plus_positive(self) -> tuple[float, float] | None:
        """(a, c) with transform(W) = a W + c W+ for every W, or None where there are none."""
        return {"identity": (1.0, 0.0), "positive": (0.0, 1.0), "negative": (1.0, -1.0),
                "scaled_positive": (0.0, self.gamma), "gamma_up": (1.0, self.gamma),
                "gamma_down": (1.0 + self.gamma, -self.gamma)}.get(self.kind)

    @property
    def nonpositive(self) -> bool:
        return self.kind == "negative"

    def __repr__(self) -> str:
        return {"identity": "W", "positive": "W+", "negative": "W-", "square": "W*W", "ones": "1",
                "gamma_up": f"W+{self.gamma:g}W+", "gamma_down": f"W+{self.gamma:g}W-",
                "scaled_positive": f"{self.gamma:g}W+"}[self.kind]


IDENTITY = Transform("identity")
POSITIVE = Transform("positive")
NEGATIVE = Transform("negative")
SQUARE = Transform("square")
ONES = Transform("ones")

# input modifiers a term may use; the last three do not depend on the input
INPUTS = ("x", "x+", "x-", "ones", "low", "high")
CONSTANT_INPUTS = ("ones", "low", "high")


@dataclass(frozen=True)
class Term:
    input: str                  # one of INPUTS
    weight: Transform
    bias: Transform | None      # None: the term has no bias
    sign: float = 1.0


@dataclass(frozen=True)
class Group:
    terms: tuple[Term, ...]
    coefficient: float = 1.0
    gate: str | None = None     # "positive" / "negative": only outputs whose original z has that sign
    # where the gate is open, z_g has the gate's sign too (so stab(z_g) = z_g +- eps, known when compiling)
    sign_follows_gate: bool = False


class Rule:
    """Base of all rules. Weighted rules implement groups(); Pass and Norm are handled by the ops."""

    stabilizer: float = DEFAULT_STABILIZER

    def groups(self) -> tuple[Group, ...]:
        raise NotImplementedError(f"{type(self).__name__} has no weighted form")


def _bias(transform: Transform, zero_bias: bool) -> Transform | None:
    return None if zero_bias else transform


@dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-epsilon; epsilon=0 gives LRP-0."""

    epsilon: float = DEFAULT_STABILIZER
    zero_bias: bool = False

    @property
    def stabilizer(self) -> float:  # Zennit calls it epsilon for this rule only
        return self.epsilon

    def groups(self):
        return (Group((Term("x", IDENTITY, _bias(IDENTITY, self.zero_bias)),)),)


@dataclass(frozen=True)
class ZPlus(Rule):
    """z+ (alpha1beta0), with negative inputs handled sign-aware as in Zennit."""

    stabilizer: float = DEFAULT_STABILIZER
    zero_bias: bool = False

    def groups(self):
        return (Group((Term("x+", POSITIVE, _bias(POSITIVE, self.zero_bias)), Term("x-", NEGATIVE, None))),)


@dataclass(frozen=True)
class AlphaBeta(Rule):
    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = DEFAULT_STABILIZER
    zero_bias: bool = False

    def __post_init__(self):
        if self.alpha < 0 or self.beta < 0:
            raise ValueError(f"AlphaBeta needs alpha >= 0 and beta >= 0, got alpha={self.alpha}, beta={self.beta}")
        if self.alpha - self.beta != 1:
            raise ValueError(f"AlphaBeta needs alpha - beta = 1, got alpha={self.alpha}, beta={self.beta}")

    def groups(self):
        activating = Group((Term("x+", POSITIVE, _bias(POSITIVE, self.zero_bias)), Term("x-", NEGATIVE, None)),
                           coefficient=self.alpha)
        inhibiting = Group((Term("x+", NEGATIVE, _bias(NEGATIVE, self.zero_bias)), Term("x-", POSITIVE, None)),
                           coefficient=-self.beta)
        return (activating, inhibiting) if self.beta != 0 else (activating,)


@dataclass(frozen=True)
class Gamma(Rule):
    """Sign-aware generalised gamma rule (Zennit's Gamma)."""

    gamma: float = 0.25
    stabilizer: float = DEFAULT_STABILIZER
    zero_bias: bool = False

    def groups(self):
        up = Transform("gamma_up", self.gamma)
        down = Transform("gamma_down", self.gamma)
        # z_up - z = gamma (W+ x+ + W- x- + b+) >= 0 and z_down - z <= 0 when gamma >= 0 and b is kept
        follows = self.gamma >= 0 and not self.zero_bias
        return (
            Group((Term("x+", up, _bias(up, self.zero_bias)), Term("x-", down, None)), gate="positive",
                  sign_follows_gate=follows),
            Group((Term("x+", down, _bias(down, self.zero_bias)), Term("x-", up, None)), gate="negative",
                  sign_follows_gate=follows),
        )


@dataclass(frozen=True, eq=False)
class ZBox(Rule):
    """z^B for inputs bounded by low <= x <= high (scalars or arrays broadcastable to one input sample)."""

    low: float | np.ndarray = field(default=0.0)
    high: float | np.ndarray = field(default=1.0)
    stabilizer: float = DEFAULT_STABILIZER
    zero_bias: bool = False

    def groups(self):
        return (Group((
            Term("x", IDENTITY, _bias(IDENTITY, self.zero_bias)),
            Term("low", POSITIVE, _bias(POSITIVE, self.zero_bias), sign=-1.0),
            Term("high", NEGATIVE, _bias(NEGATIVE, self.zero_bias), sign=-1.0),
        )),)

    def __repr__(self) -> str:
        def short(v):
            a = np.asarray(v)
            return f"{float(a):g}" if a.size == 1 else f"array{tuple(a.shape)}"
        return f"ZBox(low={short(self.low)}, high={short(self.high)})"


@dataclass(frozen=True)
class WSquare(Rule):
    stabilizer: float = DEFAULT_STABILIZER
    zero_bias: bool = False

    def groups(self):
        return (Group((Term("ones", SQUARE, _bias(SQUARE, self.zero_bias)),)),)


@dataclass(frozen=True)
class Flat(Rule):
    """All weights one, bias dropped, input one: relevance spread evenly over each receptive field."""

    stabilizer: float = DEFAULT_STABILIZER

    def groups(self):
        return (Group((Term("ones", ONES, None),)),)


@dataclass(frozen=True)
class Pass(Rule):
    """Relevance passes through unchanged (R_x = R)."""


@dataclass(frozen=True)
class Norm(Rule):
    """For layers without weights: R_x = x * J^T [R / stab(f(x))]."""

    stabilizer: float = DEFAULT_STABILIZER


@dataclass(frozen=True)
class UniformShare(Rule):
    """AttnLRP's uniform rule for a product of two computed tensors (Q K^T, P V, gate * up): each operand
    receives `share` of the relevance (1/2: R_A = A * ((R / stab(O)) B^T) / 2, R_B likewise)."""

    share: float = 0.5


@dataclass(frozen=True)
class Constant(Rule):
    """The tensor is held constant (CP-LRP's attention probabilities and gates): no relevance flows back
    through it, so the other operand of its product receives all of it."""


def LRP0() -> Epsilon:  # noqa: N802 - reads as a rule name
    return Epsilon(epsilon=0.0)


__all__ = ["Rule", "Epsilon", "ZPlus", "AlphaBeta", "Gamma", "ZBox", "WSquare", "Flat", "Pass", "Norm",
           "UniformShare", "Constant", "LRP0", "Term", "Group", "Transform"]
