"""The one reverse walk: from the explained output down to the sources, every node on the path sends what
arrives at its outputs back to its inputs, by its family's functions and its rule (onnxlrp.ops.registry); a
tensor read by several nodes receives the sum (fan-out).

Per node, the rule and the family decide how (the "strategy"):
  pass     rules.Pass (non-linearities, x * h(x) blocks, declared ops): R_x = R_y, or in gradient form the
           identity rule g_x = g_y * y / (x + 1e-10); whichever form arrives
  route    ops that only move elements: their J^T, on R or g alike
  vjp      the Norm / Epsilon / uniform rule as a modified gradient: g_x = share * J^T g_y (LXT's efficient
           form; the composites of form "gradient", AttnLRP and CP-LRP)
  own      the family's relevance handler: the weighted rules (ZPlus, Gamma, Flat, ... onnxlrp/ops/weighted.py)
  generic  the Norm / Epsilon / uniform rule in relevance form: R_x = share * x * J^T [R_y / stab(y)]
  probe    an op onnxlrp has no family for, declared Norm: its Jacobian probed at compile time
The walk converts R and g where the forms of neighbouring nodes differ (onnxlrp/compiler/signals.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from .. import rules as R
from ..errors import UnsupportedOpError
from ..ops.context import Builder, Context
from ..ops.linear_map import linear_map
from ..ops.registry import Family, family_of
from ..zero_relevance import ZeroRelevance
from .analysis import Analysis
from .query_chunks import chunkable, relevance_over_query_chunks
from .signals import GRADIENT, RELEVANCE, Signal, convert, gather

IDENTITY_EPSILON = 1e-10   # LXT's identity rule divides by x + 1e-10


@dataclass
class Walked:
    received: dict[str, list[Signal]]            # what reached each source
    layer_inputs: list[tuple[str, str, str]] = field(default_factory=list)   # (layer, R at its input, its input)
    start_relevance: str | None = None           # contrastive: the start, on the pairwise layer


def plain_gradient(rule) -> bool:
    """Rules whose gradient form is the plain (or uniformly shared) VJP: Norm and Epsilon at most at the default
    stabiliser (LXT's efficient mode drops it, an O(eps / z) difference), the uniform rule, Constant."""
    if isinstance(rule, R.Epsilon):
        return rule.epsilon <= R.DEFAULT_STABILIZER and not rule.zero_bias
    return isinstance(rule, (R.Norm, R.UniformShare, R.Constant))


def strategy(family: Family | None, rule, kind: str | None, form: str, block: bool, node) -> str:
    if block or isinstance(rule, R.Pass):
        return "pass"
    if family is None:
        if isinstance(rule, R.Norm):
            return "probe"
        domain = f" from domain '{node.domain}'" if node.domain not in ("", "ai.onnx") else ""
        raise UnsupportedOpError(node.op_type, node.name, f"no relevance handler{domain}")
    if family.routes and rule is None:
        return "route"
    linear = isinstance(rule, (R.Norm, R.Epsilon, R.UniformShare, R.Constant))
    if linear and family.vjp is not None and form == GRADIENT and plain_gradient(rule):
        return "vjp"
    if family.relevance is not None and rule is not None:
        return "own"
    if linear and family.vjp is not None:
        return "generic"
    if family.routes:
        return "route"
    raise UnsupportedOpError(node.op_type, node.name, f"the rule {rule!r} does not apply to a '{kind}' layer")


class Walk:
    def __init__(self, b: Builder, analysis: Analysis, composite, forward_nodes: dict[str, onnx.NodeProto],
                 crp, opset: int, contrastive=None, record_layers: bool = False, batch_fixed: bool = False,
                 support: tuple[int, int, int] | None = None, attentions: list = (), query_chunk: int | None = None):
        self.b, self.analysis, self.crp, self.opset = b, analysis, crp, opset
        # with query_chunk, each head whose relevance goes over its queries in chunks (query_chunks.py), by the
        # name of its output product, and the nodes of such chains, which the walk then does not visit itself
        self.chunked_heads = {chain.nodes[-1]: chain for attention in attentions for chain in attention.heads
                              if query_chunk and chunkable(chain, analysis, forward_nodes)}
        self.in_chunked_heads = {name for chain in self.chunked_heads.values() for name in chain.nodes}
        # an attention split per head (canonical/heads.py): its Split nodes, by the name of each, where its heads'
        # signals are to be tied (a chunked head's Loop sends to Q, K^T and V at once: tied already)
        self.head_splits = {name: attention.splits for attention in attentions for name in attention.splits
                            if any(chain.nodes[-1] not in self.chunked_heads for chain in attention.heads)}
        self.query_chunk = query_chunk
        self.sources = set(analysis.all_sources)
        self.batch_fixed = batch_fixed
        self.support = support   # where the start can be non-zero, along one axis of the explained output
        self.form = GRADIENT if composite.form == "gradient" else RELEVANCE
        self.forward_nodes = forward_nodes
        self.contrastive = contrastive     # (the node under the logits, its pairwise start function)
        self.record_layers = record_layers
        self.zeros = ZeroRelevance(analysis.fwd, analysis.path, analysis.rules, analysis.logits, analysis.live,
                                   analysis.kinds)

    def run(self, start: Signal | None) -> Walked:
        analysis = self.analysis
        received: dict[str, list[Signal]] = {analysis.logits: [start]} if start else {}
        walked = Walked(received=received)
        for node in reversed(analysis.path):
            if node.name in self.chunked_heads:
                relevance_over_query_chunks(self, self.chunked_heads[node.name], received, walked, self.query_chunk)
            elif node.name not in self.in_chunked_heads:
                self.visit(node, received, walked)
        return walked

    def visit(self, node, received: dict[str, list[Signal]], walked: Walked) -> None:
        """Send what `received` holds at the node's outputs back to its inputs, into `received`."""
        b = self.b
        if node.name in self.head_splits:
            self._tie_heads(self.head_splits[node.name], received)
        signals = [gather(b, received.get(o) if o in self.sources else received.pop(o, None), o, node.name)
                   if o else None for o in node.output]
        signals = self.crp.apply(b, node, signals, received)
        is_contrastive = self.contrastive is not None and node is self.contrastive[0]
        if not is_contrastive and not any(signals):
            return
        b.set_scope(node.name)
        sent = self._send(node, signals, walked, is_contrastive)
        for name, signal in zip(self._targets(node), sent):
            if signal is not None:
                received.setdefault(name, []).append(signal)

    def _targets(self, node) -> list[str]:
        block = self.analysis.blocks.get(node.name)
        return [block] if block is not None else list(node.input)

    def _context(self, node, signals: list[str | None], form: str) -> Context:
        analysis = self.analysis
        carries = [analysis.carries(name) for name in node.input]
        relevance_form = form == RELEVANCE
        support = self.support if self.support and analysis.logits in node.output else None
        return Context(node=self.forward_nodes[node.name], graph=analysis.fwd, b=self.b,
                       rule=analysis.rules.get(node.name), signals=signals, carries=carries,
                       kind=analysis.kinds.get(node.name), opset=self.opset, batch_fixed=self.batch_fixed,
                       extra={"nonzero": support} if support else {},
                       only_where_positive=relevance_form and self.zeros.only_where_positive(node), form=form,
                       relu_of_output=self.zeros.relu_of(node) if relevance_form else None)

    def _send(self, node, signals: list[Signal | None], walked: Walked, is_contrastive: bool) -> list[Signal | None]:
        analysis, b = self.analysis, self.b
        if node.name in analysis.refused:
            raise analysis.refused[node.name]
        rule = analysis.rules.get(node.name)
        kind = analysis.kinds.get(node.name)
        family = family_of(node.op_type, node.domain)
        if is_contrastive:
            ctx = self._context(node, [None], RELEVANCE)
            sent, walked.start_relevance = self.contrastive[1](ctx)
            return self._record(node, [Signal(s, RELEVANCE) if s else None for s in sent], walked)
        how = strategy(family, rule, kind, self.form, node.name in analysis.blocks, node)
        if how == "route":
            forms = {s.form for s in signals if s}
            form = forms.pop() if len(forms) == 1 else RELEVANCE
            seeds = [convert(b, s, o, form) if s else None for s, o in zip(signals, node.output)]
            sent = family.vjp(self._context(node, seeds, form), seeds)
            return [Signal(s, form) if s else None for s in sent]
        if how == "pass":
            return self._pass(node, signals)
        # the uniform rule shares among the operands that receive relevance (one of them may be held constant)
        shared = isinstance(rule, R.UniformShare) and all(analysis.carries(name) for name in node.input)
        share = rule.share if shared else 1.0
        if how == "vjp":
            seeds = [convert(b, s, o, GRADIENT) if s else None for s, o in zip(signals, node.output)]
            sent = family.vjp(self._context(node, seeds, GRADIENT), seeds)
            return self._record(node, [Signal(self._scaled(s, share), GRADIENT) if s else None for s in sent], walked)
        relevances = [convert(b, s, o, RELEVANCE) if s else None for s, o in zip(signals, node.output)]
        ctx = self._context(node, relevances, RELEVANCE)
        if how == "probe":
            sent = linear_map(ctx, rule.stabilizer)
        else:
            sent = family.relevance(ctx) if how == "own" else None
            if sent is None:   # the rule's general relevance form
                sent = self._generic(ctx, family, rule, share)
        return self._record(node, [Signal(s, RELEVANCE) if s else None for s in sent], walked)

    def _tie_heads(self, splits: list[str], received: dict[str, list[Signal]]) -> None:
        """The signals at one head's operands of a split attention (its Q, K^T, V), each made to depend on the
        others (+ 0 * one of their elements, exact). onnxruntime runs what an output needs depth first: reaching
        one head's signal to Q, it then runs that head's whole relevance (to Q, K and V) while the head's
        [queries, keys] tensors are at hand, instead of running the relevance to Q of every head before that to
        K or V, with every head's probabilities held until then. Done once per attention, at the first of its
        Splits the walk reaches (every head's chain is walked by then)."""
        for name in splits:
            self.head_splits.pop(name, None)
        nodes = [self.forward_nodes[name] for name in splits]
        for parts in zip(*(node.output for node in nodes)):   # head h: output h of each Split
            signals = {name: gather(self.b, received.pop(name, None), name, f"{name}/tie") for name in parts}
            present = {name: s for name, s in signals.items() if s is not None}
            if len(present) < 2:
                received.update((name, [s]) for name, s in present.items())
                continue
            b = self.b
            b.set_scope(f"{parts[0]}/tie")
            zeros = {name: b.op("Mul", [b.op("Slice", [b.op("Reshape", [s.name, b.ints([-1])]), b.ints([0]),
                                                       b.ints([1])]), b.scalar(0.0)]) for name, s in present.items()}
            for name, signal in present.items():
                tied = b.op("Sum", [signal.name] + [zeros[other] for other in present if other != name], hint="tied")
                received[name] = [Signal(tied, signal.form)]

    def _scaled(self, tensor: str, share: float) -> str:
        return tensor if share == 1.0 else self.b.op("Mul", [tensor, self.b.scalar(share)], hint="uniform")

    def _generic(self, ctx: Context, family: Family, rule, share: float) -> list[str | None]:
        """R_x = share * x * J^T [R / stab(y)] for each input that carries relevance."""
        if len(ctx.node.output) > 1 and any(ctx.signals[1:]):
            raise UnsupportedOpError(ctx.op, ctx.name, "relevance at more than one output of a linear map")
        s = ctx.divide_by_output(ctx.R(), rule.stabilizer)
        back = family.vjp(ctx, [s])
        return [self._scaled(self.b.op("Mul", [ctx.x(i), t]), share) if t is not None and ctx.carries[i] else None
                for i, t in enumerate(back)]

    def _pass(self, node, signals: list[Signal | None]) -> list[Signal | None]:
        """R_x = R_y to the first input relevance flows into (a block's input x), in the form that arrives."""
        analysis, b = self.analysis, self.b
        targets = [name for name in self._targets(node) if analysis.carries(name)]
        if not targets or len([s for s in signals if s]) != 1:
            raise UnsupportedOpError(node.op_type, node.name, "rules.Pass sends the relevance of one output to an "
                                     "input; give it a rule of its kind")
        x, y = targets[0], node.output[signals.index(next(s for s in signals if s))]
        x_shape, y_shape = analysis.fwd.shape(x), analysis.fwd.shape(y)
        if x_shape != y_shape and not (x_shape and y_shape and len(x_shape) == len(y_shape)
                                       and all(a is None or c is None or a == c for a, c in zip(x_shape, y_shape))):
            raise UnsupportedOpError(node.op_type, node.name, f"rules.Pass, but its output shape {y_shape} differs from "
                                     f"its input shape {x_shape}")
        signal = next(s for s in signals if s)
        if signal.form == RELEVANCE:
            return [Signal(signal.name, RELEVANCE) if name == x else None for name in self._targets(node)]
        ratio = b.op("Div", [y, b.op("Add", [x, b.scalar(IDENTITY_EPSILON)])], hint="identity_rule")
        gradient = b.op("Mul", [signal.name, ratio])
        return [Signal(gradient, GRADIENT) if name == x else None for name in self._targets(node)]

    def _record(self, node, sent: list[Signal | None], walked: Walked) -> list[Signal | None]:
        """Weighted layers: remember the relevance at their input (layer sums, layer relevances)."""
        if self.record_layers and self.analysis.kinds.get(node.name) in ("conv", "dense") and sent and sent[0]:
            relevance = convert(self.b, sent[0], node.input[0], RELEVANCE)
            walked.layer_inputs.append((node.name, relevance, node.input[0]))
        return sent
