"""Applying a rule (onnxlrp.rules: groups of terms) to any weighted layer.

A weighted layer is described by a LinearMap: its weight W and bias b as numpy arrays, and how to
emit "W' u + b'" (forward) and "W'^T s" (transpose) for a transformed W'. Conv, ConvTranspose and
Gemm each provide one; everything rule-specific happens here, once for all of them.
"""
from __future__ import annotations

import numpy as np
import onnx

from ..rules import CONSTANT_INPUTS, IDENTITY, NEGATIVE, POSITIVE, Group, Norm, Pass, Rule, Transform
from ..rules import Epsilon
from .context import Context


class LinearMap:
    """z = W x + b for one weighted node. Subclasses emit the actual ops."""

    def __init__(self, ctx: Context, weight: np.ndarray, bias: np.ndarray | None):
        self.ctx = ctx
        self.weight = weight
        self.bias = bias
        self._weights: dict[Transform, str] = {}
        self._biases: dict[Transform, str] = {}

    # transformed weights become initialisers, each at most once per layer
    def weight_name(self, transform: Transform) -> str:
        if transform not in self._weights:
            self._weights[transform] = (self._forward_weight(transform)
                                        or self.ctx.b.const(transform(self.weight), hint=f"W_{transform.kind}"))
        return self._weights[transform]

    def _forward_weight(self, transform: Transform) -> str | None:
        """The forward op's own initialiser where the transform leaves W as it is: no copy (VGG's fc1: 400 MB)."""
        return self.ctx.node.input[1] if transform.kind == "identity" else None

    def bias_name(self, transform: Transform | None, offset: float = 0.0) -> str | None:
        """The transformed bias b' (+ offset: a stabiliser folded in), or None where there is none."""
        if (transform is None or self.bias is None) and offset == 0:
            return None
        key = (transform if self.bias is not None else None, offset)
        if key not in self._biases:
            values = transform(self.bias) if key[0] is not None else np.zeros(self.out_channels())
            self._biases[key] = self.ctx.b.const(values + offset, hint=f"b_{transform.kind if key[0] else 'zero'}"
                                                 + ("_stab" if offset else ""))
        return self._biases[key]

    def operands(self, inp: str, weight: Transform, bias: Transform | None, offset: float = 0.0) -> list[str]:
        """[inp, W'] or [inp, W', b' (+ offset)]: the inputs of a forward op with transformed parameters."""
        bias_name = self.bias_name(bias, offset)
        return [inp, self.weight_name(weight)] + ([bias_name] if bias_name else [])

    def output(self) -> str:
        """z = W x + b as computed by the forward graph (reused by Epsilon and Gamma's sign gate)."""
        return self.ctx.y()

    def fan_in(self) -> int:
        """Multiply-adds per output value of the forward op."""
        return int(np.prod(self.weight.shape[1:]))

    def sample_shape(self) -> tuple:
        """The explained layer input's shape without the batch axis (static)."""
        raise NotImplementedError

    def out_channels(self) -> int:
        """Length of the bias vector."""
        raise NotImplementedError

    def forward(self, inp: str, weight: Transform, bias: Transform | None, offset: float = 0.0) -> str:
        """W' inp + b' (+ offset)."""
        raise NotImplementedError

    def forward_constant(self, inp: np.ndarray, weight: Transform, bias: Transform | None) -> np.ndarray:
        """W' inp + b' for an input-independent inp of shape (1, *sample_shape)."""
        raise NotImplementedError

    def transpose(self, s: str, weight: Transform) -> str:
        raise NotImplementedError


def propagate(ctx: Context, layer: LinearMap, rule: Rule) -> str:
    """Relevance sent to the layer's input under `rule`."""
    if isinstance(rule, Pass):
        return ctx.R()
    if isinstance(rule, Norm):
        rule = Epsilon(epsilon=rule.stabilizer)
    inputs = _InputParts(ctx, layer)
    groups = rule.groups()
    if ctx.only_where_positive:
        # relevance is 0 where z <= 0 (zero_relevance.py): the negative branch carries nothing and
        # the positive gate changes nothing
        groups = [g for g in groups if g.gate != "negative"]
    denominators = _denominators_from_forward(ctx, layer, groups, inputs, rule.stabilizer)
    group_results = []
    for k, group in enumerate(groups):
        masked = bool(group.gate) and not ctx.only_where_positive
        terms = [t for t in group.terms if not inputs.vanishes(t.input)]
        if denominators:
            s = ctx.b.op("Div", [ctx.R(), denominators[k]])
        else:
            s = _scaled_relevance(ctx, layer, group, terms, inputs, rule.stabilizer)
        if masked:
            s = _gated(ctx, layer, s, group.gate)
        transposed = _transposes(ctx, layer, s, [t.weight for t in terms])
        back = [(inputs.times(t.input, transposed[t.weight]), t.sign) for t in terms]
        total = _signed_sum(ctx, back)
        group_results.append((total, group.coefficient))
    return _signed_sum(ctx, group_results)


# The shared Conv saves one modified forward but costs three element-wise passes (a_g z + q per group and
# a Mul): on onnxruntime's CPU provider that pays off from about this many multiply-adds per output
# (ResNet-50: its 1x1 layers with 256 or more input channels).
SHARED_CONV_MIN_FAN_IN = 256


def _denominators_from_forward(ctx, layer: LinearMap, groups, inputs: "_InputParts", eps: float) -> list[str] | None:
    """Stabilised denominators of several gated groups from the forward z and one shared Conv, where each
    group's z_g is a_g z + c_g p with p = W+ x + b+ (Gamma on inputs >= 0: z_up = z + g p,
    z_down = (1 + g) z - g p): one modified forward for all groups instead of one per group.
    Scaling p by c_1 and folding the stabilisers into its bias gives z_g +- eps = a_g z + (c_g / c_1) q,
    q = c_1 (W+ x + b+) + sign_1 eps, where every group's sign_g eps / c_g agrees (Gamma: eps / g)."""
    if eps <= 0 or len(groups) < 2 or not inputs.nonnegative or layer.fan_in() < SHARED_CONV_MIN_FAN_IN:
        return None
    parts = []
    for group in groups:
        terms = [t for t in group.terms if not inputs.vanishes(t.input)]
        if not (group.gate and group.sign_follows_gate) or len(terms) != 1:
            return None
        term = terms[0]
        split = term.weight.as_identity_plus_positive()
        if term.input not in ("x", "x+") or term.sign != 1 or split is None or split[1] == 0:
            return None
        if layer.bias is not None and term.bias != term.weight:
            return None
        parts.append((1.0 if group.gate == "positive" else -1.0, *split))
    sign_1, _, c_1 = parts[0]
    if any(not np.isclose(sign / c, sign_1 / c_1, rtol=1e-12, atol=0) for sign, _, c in parts):
        return None
    scaled = Transform("scaled_positive", c_1)
    q = layer.forward(inputs.name("x"), scaled, scaled, offset=sign_1 * eps)
    b, z = ctx.b, layer.output()
    denominators = []
    for sign, a, c in parts:
        stabilized = _signed_sum(ctx, [(z, a), (q, c / c_1)])
        # where the gate is closed the sign is unknown: the clamp keeps the division finite (see _gated)
        denominators.append(b.op("Max", [stabilized, b.scalar(eps)]) if sign > 0
                            else b.op("Min", [stabilized, b.scalar(-eps)]))
    return denominators


def _transposes(ctx, layer: LinearMap, s: str, weights: list[Transform]) -> dict[Transform, str]:
    """W'^T s for each weight transform. W = W+ + W-, so where W^T s and W+^T s are both needed (ZBox),
    W-^T s is their difference: two transposes instead of three."""
    derive_negative = {IDENTITY, POSITIVE, NEGATIVE} <= set(weights)
    out = {}
    for weight in weights:
        if weight not in out and not (derive_negative and weight == NEGATIVE):
            out[weight] = layer.transpose(s, weight)
    if derive_negative:
        out[NEGATIVE] = ctx.b.op("Sub", [out[IDENTITY], out[POSITIVE]])
    return out


class _InputParts:
    """x, x+, x-, and the constant inputs (ones, low, high), each emitted at most once."""

    def __init__(self, ctx: Context, layer: LinearMap):
        self.ctx, self.layer = ctx, layer
        self.x = ctx.x()
        self.nonnegative = ctx.graph.is_nonnegative(self.x)
        self._names: dict[str, str] = {}

    def vanishes(self, which: str) -> bool:
        return which == "x-" and self.nonnegative

    def constant(self, which: str) -> np.ndarray:
        shape = (1,) + tuple(self.layer.sample_shape())
        if which == "ones":
            return np.ones(shape, dtype=np.float32)
        bound = getattr(self.ctx.rule, which)
        try:
            return np.broadcast_to(np.asarray(bound, dtype=np.float32), shape).copy()
        except ValueError:
            raise ValueError(f"ZBox {which} of shape {np.shape(bound)} does not broadcast to the input of "
                             f"layer '{self.ctx.name}' with shape {shape}") from None

    def name(self, which: str) -> str:
        if which == "x" or (which == "x+" and self.nonnegative):
            return self.x
        if which not in self._names:
            b = self.ctx.b
            if which == "x+":
                self._names[which] = b.positive_part(self.x)
            elif which == "x-":
                self._names[which] = b.negative_part(self.x)
            else:
                self._names[which] = b.const(self.constant(which), hint=which)
        return self._names[which]

    def times(self, which: str, tensor: str) -> str:
        if which == "ones":
            return tensor
        return self.ctx.b.op("Mul", [self.name(which), tensor])


def _reuses_forward(layer: LinearMap, term) -> bool:
    """Is this term exactly the layer's own forward computation?"""
    return term.input == "x" and term.weight == IDENTITY and (
        layer.bias is None or term.bias == IDENTITY)


def _term_sign(term, inputs: _InputParts) -> int:
    """+1 / -1 where sign * input * W' + b' is >= 0 / <= 0 for any input and weights, by the signs of its
    factors alone; 0 where only the data tells."""
    if term.sign < 0 or term.input in CONSTANT_INPUTS:
        return 0
    if term.input == "x+" or (term.input == "x" and inputs.nonnegative):
        input_sign = 1
    elif term.input == "x-" and term.bias is None:
        input_sign = -1
    else:
        return 0
    sign = input_sign * _values_sign(term.weight)
    if term.bias is not None and _values_sign(term.bias) != sign:
        return 0
    return sign


def _values_sign(transform: Transform) -> int:
    return 1 if transform.nonnegative else -1 if transform.nonpositive else 0


def _known_sign(group: Group, computed, inputs: _InputParts) -> int:
    """+1 / -1 where stab(z_g) = z_g + eps / z_g - eps wherever relevance passes, 0 where only the data tells."""
    if group.gate and group.sign_follows_gate:
        return 1 if group.gate == "positive" else -1
    signs = {_term_sign(t, inputs) for t in computed}
    return signs.pop() if len(signs) == 1 else 0


def _scaled_relevance(ctx, layer, group: Group, terms, inputs: _InputParts, eps: float) -> str:
    """s = gate * R / stab(z_group). Where z_group >= 0 by construction (ZPlus, and any rule on
    non-negative inputs with non-negative weights), stab(z) = z + eps and eps goes into a bias."""
    b = ctx.b
    computed = [t for t in terms if t.input not in CONSTANT_INPUTS]
    constant = None
    for t in terms:
        if t.input in CONSTANT_INPUTS:
            value = t.sign * layer.forward_constant(inputs.constant(t.input), t.weight, t.bias).astype(np.float64)
            constant = value if constant is None else constant + value
    sign = _known_sign(group, computed, inputs) if eps > 0 and constant is None else 0
    fold = sign != 0 and not any(_reuses_forward(layer, t) for t in computed)
    parts = []
    for k, t in enumerate(computed):
        if _reuses_forward(layer, t):
            parts.append((layer.output(), t.sign))
        else:
            offset = sign * eps if fold and k == 0 else 0.0
            parts.append((layer.forward(inputs.name(t.input), t.weight, t.bias, offset), t.sign))
    if fold:
        z = _signed_sum(ctx, parts)
        if group.gate and group.sign_follows_gate:
            # z_g has the gate's sign only where the gate is open; the clamp keeps the division finite
            # elsewhere, where the gate then zeroes it, and changes nothing where it is open
            z = b.op("Max", [z, b.scalar(eps)]) if sign > 0 else b.op("Min", [z, b.scalar(-eps)])
        s = b.op("Div", [ctx.R(), z])
    elif parts == [(layer.output(), 1.0)] and constant is None and layer.output() == ctx.y():
        s = ctx.divide_by_output(ctx.R(), eps)      # Epsilon: the denominator is the forward z itself
    elif parts:
        z = _signed_sum(ctx, parts)
        if constant is not None:
            z = b.op("Add", [z, b.const(constant, hint="z_const")])
        s = b.divide(ctx.R(), z, eps)
    else:  # the whole denominator is input-independent: stabilise it once, here
        stabilized = constant + eps * np.where(constant >= 0, 1.0, -1.0)
        inverse = np.divide(1.0, stabilized, out=np.zeros_like(stabilized), where=stabilized != 0)
        s = b.op("Mul", [ctx.R(), b.const(inverse, hint="inv_z")])
    return s


def _gated(ctx, layer: LinearMap, s: str, gate: str) -> str:
    """s where the forward z has the gate's sign, else 0. s is finite everywhere, so a 0/1 mask multiplies
    it: onnxruntime's CPU Where with a scalar branch runs many times slower than Mul."""
    b = ctx.b
    compare = "Greater" if gate == "positive" else "Less"
    mask = b.op("Cast", [b.op(compare, [layer.output(), b.scalar(0.0)])], to=onnx.TensorProto.FLOAT)
    return b.op("Mul", [s, mask], hint="gate")


def _signed_sum(ctx, weighted: list[tuple[str, float]]) -> str:
    """sum_i c_i * t_i, with +-1 coefficients as Sum/Sub and others as one Mul each."""
    b = ctx.b
    plus, minus = [], []
    for tensor, coefficient in weighted:
        if coefficient == 1:
            plus.append(tensor)
        elif coefficient == -1:
            minus.append(tensor)
        elif coefficient > 0:
            plus.append(b.op("Mul", [tensor, b.scalar(coefficient)]))
        elif coefficient < 0:
            minus.append(b.op("Mul", [tensor, b.scalar(-coefficient)]))
    if not plus:
        return b.op("Neg", [b.add_all(minus)])
    total = b.add_all(plus)
    if minus:
        total = b.op("Sub", [total, b.add_all(minus)])
    return total
