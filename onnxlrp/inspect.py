"""`onnxlrp inspect`: which rule or treatment each node on the relevance path gets, and what cannot be
explained (with a remedy)."""
from __future__ import annotations

from dataclasses import dataclass

from . import composites as composites_module
from .canonical import canonicalize
from .compiler import _name_nodes, compile_explainer
from .compiler.analysis import analyse, explained_sources
from .errors import OnnxLrpError, UnsupportedOpError
from .graph import ForwardGraph
from .model import load_model
from .oneclass import find_one_class_svm
from .ops.registry import family_of
from .rules import Norm


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
    if find_one_class_svm(proto) is not None:
        compiled = compile_explainer(proto, composite=composite, output=output, inputs=inputs)
        return Report([Row(name, op, rule, True) for name, op, rule in compiled.layer_rules], compiled.logits, [])
    try:
        canonical = canonicalize(proto, output)
        _name_nodes(canonical.model)
        fwd = ForwardGraph(canonical.model)
        analysis = analyse(fwd, explained_sources(fwd, inputs), canonical.logits, composite)
    except OnnxLrpError as exc:
        return Report(rows=[], logits="?", problems=[str(exc)])
    layers = {layer.name: layer for layer, _ in analysis.layers}
    rows, problems = [], []
    for node in analysis.path:
        family = family_of(node.op_type, node.domain)
        rule = analysis.rules.get(node.name)
        layer = layers.get(node.name)
        declared = " (declared)" if (composite.declares(layer) if layer else rule is not None) else ""
        if node.name in analysis.refused:
            rows.append(Row(node.name, node.op_type, "UNSUPPORTED", False))
            problems.append(str(analysis.refused[node.name]))
        elif node.name in analysis.blocks:
            rows.append(Row(node.name, node.op_type, f"nonlinear block x * h(x) of '{analysis.blocks[node.name]}': "
                                                     f"{rule!r}{declared}", True))
        elif layer is not None:
            rows.append(Row(node.name, node.op_type, f"{layer.kind}: {rule!r}{declared}", True))
        elif family is None and isinstance(rule, Norm):
            rows.append(Row(node.name, node.op_type, "Norm (declared: linear map, Jacobian probed)", True))
        elif rule is not None:
            rows.append(Row(node.name, node.op_type, f"{rule!r}{declared}", True))
        elif family is not None and family.routes:
            rows.append(Row(node.name, node.op_type, f"routing ({family.name})", True))
        else:
            rows.append(Row(node.name, node.op_type, "UNSUPPORTED", False))
            domain = f" from domain '{node.domain}'" if node.domain not in ("", "ai.onnx") else ""
            problems.append(str(UnsupportedOpError(node.op_type, node.name, f"no relevance handler{domain}")))
    if not problems:
        try:
            compile_explainer(proto, composite=composite, output=output, inputs=inputs)
        except OnnxLrpError as exc:
            problems.append(str(exc))
    return Report(rows=rows, logits=canonical.logits, problems=problems)


def format_report(report: Report) -> str:
    width_node = max([len("node")] + [len(r.node) for r in report.rows])
    width_op = max([len("op")] + [len(r.op_type) for r in report.rows])
    lines = [f"{'node':<{width_node}}  {'op':<{width_op}}  rule / treatment",
             f"{'-' * width_node}  {'-' * width_op}  {'-' * 16}"]
    lines += [f"{r.node:<{width_node}}  {r.op_type:<{width_op}}  {r.treatment}" for r in report.rows]
    lines.append(f"\nexplanation starts at the output '{report.logits}'")
    if report.problems:
        lines.append(f"\n{len(report.problems)} problem(s):")
        lines += [f"  - {p}" for p in report.problems]
    else:
        lines.append("all ops on the relevance path are supported")
    return "\n".join(lines)
