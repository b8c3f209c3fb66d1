"""Fan-out factoring, a peephole pass over the emitted relevance nodes.

A tensor x read by several layers receives one relevance term per reader, and the rules of the
"input times" family (Epsilon, ZPlus on non-negative inputs, a residual join's share) each write theirs
as x * c_k. Their sum is rewritten as x * (c_1 + c_2 + ...): the same numbers up to rounding, with one
full-size Mul per fanned-out tensor instead of one per reader (a ResNet's every block input).
"""
from __future__ import annotations

from collections import Counter

from onnx import NodeProto, helper

from .canonical.shapes import outer_reads


def factor_fanout_products(nodes: list[NodeProto], keep: set[str] = frozenset()) -> list[NodeProto]:
    """`nodes` with each Sum of Muls that share an operand rewritten as one Mul of a Sum. A Mul is only taken
    when the Sum is its one reader and its output is not in `keep` (graph outputs)."""
    producer = {out: node for node in nodes for out in node.output}
    readers = Counter(name for node in nodes for name in [*node.input, *outer_reads(node)])
    dropped: set[int] = set()
    rewritten: dict[int, list[NodeProto]] = {}
    for node in nodes:
        if node.op_type != "Sum":
            continue
        products = [producer[name] for name in node.input if _private_product(producer.get(name), readers, keep)]
        shared = _most_shared_operand(products)
        if shared is None:
            continue
        group = [p for p in products if shared in p.input]
        coefficients = [p.input[1] if p.input[0] == shared else p.input[0] for p in group]
        grouped = {p.output[0] for p in group}
        rest = [name for name in node.input if name not in grouped]
        coefficient = f"{node.name}/coefficients"
        product = node.output[0] if not rest else f"{node.name}/factored"
        replacement = [helper.make_node("Sum", coefficients, [coefficient], name=coefficient),
                       helper.make_node("Mul", [shared, coefficient], [product], name=product)]
        if rest:
            replacement.append(helper.make_node("Sum", rest + [product], list(node.output), name=node.name))
        rewritten[id(node)] = replacement
        dropped.update(id(p) for p in group)
    result = []
    for node in nodes:
        if id(node) in dropped:
            continue
        result.extend(rewritten.get(id(node), [node]))
    return result


def _private_product(node: NodeProto | None, readers: Counter, keep) -> bool:
    return (node is not None and node.op_type == "Mul" and len(node.input) == 2
            and readers[node.output[0]] == 1 and node.output[0] not in keep)


def _most_shared_operand(products: list[NodeProto]) -> str | None:
    counts = Counter(name for p in products for name in set(p.input))
    if not counts:
        return None
    name, count = counts.most_common(1)[0]
    return name if count >= 2 else None
