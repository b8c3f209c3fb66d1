"""`onnxlrp inspect`: which rule or treatment each node on the relevance path gets, and what cannot be
explained (with a remedy)."""
from __future__ import annotations

from dataclasses import dataclass

from . import composites as composites_module
from .canonical import canonicalize
from .compiler import _assign_rules, _name_nodes, compile_explainer, explained_inputs, path_nodes_of
from .errors import OnnxLrpError, UnsupportedOpError
from .graph import ForwardGraph
from .model import load_model
from .ops import WEIGHTED, handler_for
from .rules import Norm, Pass


@dataclass
class Row:
    node: str
    op_type: str
    treatment: str
    supported: bool


@dataclass
class Report:
    rows: list[Row]
    logits: str
    problems: list[str]


def inspect_model(model, composite=None, output=None, inputs=None) -> Report:
    composite = composites_module.get(composite)
    proto = load_model(model)
    from .oneclass import find_one_class_svm
    if getattr(composite, "gradient_form", False) or find_one_class_svm(proto) is not None:
        return _inspect_compiled(proto, composite, output, inputs)
    canonical = canonicalize(proto, output)
    _name_nodes(canonical.model)
    fwd = ForwardGraph(canonical.model)
    explained = explained_inputs(fwd, inputs) or fwd.input_names[:1]
    path = path_nodes_of(fwd, explained, canonical.logits)
    rules, _ = _assign_rules(composite, fwd, path, explained[0])
    rows, problems = [], []
    for node in path:
        handler = handler_for(node.op_type) if node.domain in ("", "ai.onnx") else None
        rule = rules.get(node.name)
        if node.op_type in WEIGHTED:
            rows.append(Row(node.name, node.op_type, repr(rule), True))
        elif handler is not None:
            label = (handler.__doc__ or "").strip().splitlines()[0] if handler.__doc__ else "handled"
            rows.append(Row(node.name, node.op_type, repr(rule) if rule is not None else label, True))
        elif isinstance(rule, Pass):
            rows.append(Row(node.name, node.op_type, "Pass (declared)", True))
        elif isinstance(rule, Norm):
            rows.append(Row(node.name, node.op_type, "Norm (declared: linear map, Jacobian probed)", True))
        else:
            rows.append(Row(node.name, node.op_type, "UNSUPPORTED", False))
            problems.append(str(UnsupportedOpError(node.op_type, node.name, "no relevance handler")))
    if not problems:
        try:
            compile_explainer(proto, composite=composite, output=output, inputs=inputs)
        except OnnxLrpError as exc:
            problems.append(str(exc))
    return Report(rows=rows, logits=canonical.logits, problems=problems)


def _inspect_compiled(proto, composite, output, inputs) -> Report:
    """AttnLRP / CP-LRP: every node of a kind with a rule (dense, conv, softmax, bilinear, gate, nonlinear,
    norm), the other nodes on the way passing their plain gradient; a one-class SVM: its OC-DTD."""
    try:
        compiled = compile_explainer(proto, composite=composite, output=output, inputs=inputs)
    except OnnxLrpError as exc:
        return Report(rows=[], logits="?", problems=[str(exc)])
    rows = [Row(name, op_type, rule, True) for name, op_type, rule in compiled.layer_rules]
    return Report(rows=rows, logits=compiled.logits, problems=[])


def format_report(report: Report) -> str:
    width_node = max([len("node")] + [len(r.node) for r in report.rows])
    width_op = max([len("op")] + [len(r.op_type) for r in report.rows])
    lines = [f"{'node':<{width_node}}  {'op':<{width_op}}  rule / treatment",
             f"{'-' * width_node}  {'-' * width_op}  {'-' * 16}"]
    lines += [f"{r.node:<{width_node}}  {r.op_type:<{width_op}}  {r.treatment}" for r in report.rows]
    lines.append(f"\nexplanation starts at the logits '{report.logits}'")
    if report.problems:
        lines.append(f"\n{len(report.problems)} problem(s):")
        lines += [f"  - {p}" for p in report.problems]
    else:
        lines.append("all ops on the relevance path are supported")
    return "\n".join(lines)
