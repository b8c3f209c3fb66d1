"""Where relevance is zero by the structure of the graph, so that rules may skip work there.

A tensor t is *zero-preserving* when the relevance it receives is exactly 0 wherever t is 0. That holds
when every node that sends relevance back into t multiplies it by t (the input-times terms of the
weighted rules, the Norm of joins and average pools), or passes it on position by position to an
output that is itself zero-preserving and 0 where t is 0 (ReLU, MaxPool winners, reshapes, Concat).

The compiler uses it for nodes whose output z goes only into a ReLU whose output is zero-preserving:
their relevance is 0 wherever z <= 0, so Gamma's branch for negative outputs carries nothing and its
positive-output gate changes nothing (both are left out of the graph), and an Epsilon layer's or a
join's stabilised denominator may be taken as relu(z) + eps, reusing the forward ReLU.
"""
from __future__ import annotations

import onnx

from .graph import ForwardGraph
from .rules import Norm, Pass, Rule

# consumers that route relevance position by position and map a zero input to a zero output
ZERO_ROUTING = ("Relu", "MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Concat")
# weight-free consumers whose (Norm) relevance is input * something, unless declared Pass
INPUT_TIMES = ("Add", "Sum", "AveragePool", "GlobalAveragePool")


class ZeroRelevance:
    def __init__(self, fwd: ForwardGraph, path: list[onnx.NodeProto], rules: dict[str, Rule], logits: str,
                 live: set[str], kinds: dict[str, str]):
        self.fwd, self.rules, self.logits, self.live, self.kinds = fwd, rules, logits, live, kinds
        self.on_path = {node.name for node in path}
        self._cache: dict[str, bool] = {}

    def zero_preserving(self, tensor: str) -> bool:
        if tensor not in self._cache:
            self._cache[tensor] = False    # a cycle cannot occur in a DAG; this guards the recursion anyway
            self._cache[tensor] = self._decide(tensor)
        return self._cache[tensor]

    def _decide(self, tensor: str) -> bool:
        if tensor == self.logits or tensor in self.fwd.output_names:
            return False
        consumers = [c for c in self.fwd.consumers.get(tensor, []) if c.name in self.on_path]
        return bool(consumers) and all(self._consumer_keeps_zeros(c, tensor) for c in consumers)

    def _consumer_keeps_zeros(self, node: onnx.NodeProto, tensor: str) -> bool:
        rule = self.rules.get(node.name)
        kind = self.kinds.get(node.name)
        if isinstance(rule, Pass) and kind != "nonlinear":   # a layer or join declared Pass sends R as it is
            return False
        if kind in ("conv", "dense"):
            if node.input[0] != tensor or rule is None:
                return False
            if isinstance(rule, Norm):
                return True
            return all(term.input in ("x", "x+", "x-") for group in rule.groups() for term in group.terms)
        if node.op_type in INPUT_TIMES:      # a join with a constant operand passes relevance instead
            return node.op_type.endswith("Pool") or sum(i in self.live for i in node.input) >= 2
        if node.op_type in ZERO_ROUTING:
            if node.op_type != "Concat" and node.input[0] != tensor:
                return False
            return self.zero_preserving(node.output[0])
        return False

    def relu_of(self, node: onnx.NodeProto) -> str | None:
        """The output of a forward ReLU of the node's output, if there is one."""
        return next((c.output[0] for c in self.fwd.consumers.get(node.output[0], []) if c.op_type == "Relu"), None)

    def only_where_positive(self, node: onnx.NodeProto) -> bool:
        """Is the relevance of this node's output z zero wherever z <= 0? (z feeds only ReLUs whose
        outputs are zero-preserving.)"""
        z = node.output[0]
        consumers = [c for c in self.fwd.consumers.get(z, []) if c.name in self.on_path]
        if z == self.logits or not consumers:
            return False
        return all(c.op_type == "Relu" and self.zero_preserving(c.output[0]) for c in consumers)
