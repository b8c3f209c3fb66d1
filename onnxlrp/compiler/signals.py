"""What the walk carries down a tensor t: its relevance R, or the modified gradient g with R = t * g (LXT's
form, docs/rules.md). A handler works in one form; the walk converts where forms meet:

    g -> R   R = t * g                       exact
    R -> g   g = R / (t + 1e-10 sign(t))     exact where R = t * (something), as the rules' relevance is
                                             (LXT applies Zennit's rules in gradient form the same way)
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ops.context import Builder

RELEVANCE, GRADIENT = "R", "g"
CONVERSION_EPSILON = 1e-10


@dataclass(frozen=True)
class Signal:
    name: str
    form: str   # RELEVANCE or GRADIENT


def convert(b: Builder, signal: Signal, tensor: str, form: str) -> str:
    """The signal at `tensor` in `form`."""
    if signal.form == form:
        return signal.name
    if form == RELEVANCE:
        return b.op("Mul", [tensor, signal.name], hint="relevance")
    return b.op("Div", [signal.name, b.stabilize(tensor, CONVERSION_EPSILON)], hint="gradient")


def gather(b: Builder, signals: list[Signal] | None, tensor: str, scope: str) -> Signal | None:
    """What a tensor read by several nodes receives: the sum of their signals (in one form; relevance where
    the forms differ)."""
    if not signals:
        return None
    if len(signals) == 1:
        return signals[0]
    b.set_scope(f"{scope}/fanout")
    forms = {s.form for s in signals}
    form = forms.pop() if len(forms) == 1 else RELEVANCE
    return Signal(b.op("Sum", [convert(b, s, tensor, form) for s in signals]), form)
