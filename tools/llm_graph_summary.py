"""What an exported LLM graph holds: inputs and outputs (shape, dtype), op counts by domain, and for every
node outside the plain ONNX ops (com.microsoft, or opset >= 23 ops such as Attention, RotaryEmbedding,
RMSNormalization) its inputs with their shapes and attributes, one line per distinct signature.

    python tools/llm_graph_summary.py MODEL.onnx [...]   # markdown on stdout

The facts behind tools/llm_graphs.md; needs onnx only (external data is not loaded)."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import onnx
from onnx import helper, numpy_helper

SPECIAL_DEFAULT_DOMAIN = {"Attention", "RotaryEmbedding", "RMSNormalization", "SimplifiedLayerNormalization",
                          "DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear", "QLinearMatMul",
                          "QLinearConv", "MatMulInteger", "ConvInteger"}


def _dims(value_info) -> str:
    t = value_info.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "?"
    dims = [d.dim_param or str(d.dim_value) for d in t.shape.dim] if t.HasField("shape") else ["?"]
    return f"{dtype}[{', '.join(dims)}]"


def _shapes(model) -> dict[str, str]:
    """Every tensor's dtype[shape] that the model knows (initialisers, value_info, inputs, outputs)."""
    g = model.graph
    known = {vi.name: _dims(vi) for vi in [*g.input, *g.output, *g.value_info]}
    for init in g.initializer:
        dtype = helper.tensor_dtype_to_np_dtype(init.data_type).name
        known[init.name] = f"const {dtype}[{', '.join(map(str, init.dims))}]"
    for node in g.node:
        if node.op_type == "Constant" and node.attribute:
            value = helper.get_attribute_value(node.attribute[0])
            if isinstance(value, onnx.TensorProto):
                known[node.output[0]] = f"const {helper.tensor_dtype_to_np_dtype(value.data_type).name}" \
                                        f"[{', '.join(map(str, value.dims))}]"
    return known


def _attr(a) -> str:
    value = helper.get_attribute_value(a)
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, float):
        value = f"{value:.6g}"
    return f"{a.name}={value}"


def producers(model) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def summary(path: Path) -> str:
    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    shapes = _shapes(model)
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    header = (f"opsets: {', '.join(f'{d} {v}' for d, v in sorted(opsets.items()))}; ir_version {model.ir_version}; "
              f"{len(g.node)} nodes, {len(g.initializer)} initialisers")
    lines = [f"### {path.parent.name}/{path.name}", "", header, "", "inputs:"]
    lines += [f"- `{vi.name}`: {_dims(vi)}" for vi in g.input if vi.name not in {i.name for i in g.initializer}]
    lines += ["", "outputs:"] + [f"- `{vi.name}`: {_dims(vi)}" for vi in g.output]
    counts = Counter(((n.domain or "ai.onnx"), n.op_type) for n in g.node)
    lines += ["", "ops: " + ", ".join(f"{op}{'' if d == 'ai.onnx' else f' ({d})'} {c}"
                                      for (d, op), c in sorted(counts.items(), key=lambda x: (-x[1], x[0])))]
    seen = Counter()
    rows = {}
    for node in g.node:
        if not (node.domain not in ("", "ai.onnx") or node.op_type in SPECIAL_DEFAULT_DOMAIN):
            continue
        ins = ", ".join(f"{i or '∅'}: {shapes.get(i, '?')}" if i else "∅" for i in node.input)
        attrs = ", ".join(_attr(a) for a in node.attribute)
        key = (node.domain or "ai.onnx", node.op_type, attrs,
               tuple(shapes.get(i, "?") for i in node.input), len(node.output))
        seen[key] += 1
        rows.setdefault(key, f"- **{node.op_type}** ({node.domain or 'ai.onnx'}) `{node.name}`: attrs {{{attrs}}}; "
                             f"inputs ({len(node.input)}): {ins}; outputs: {', '.join(node.output)}")
    if rows:
        lines += ["", "special nodes (first of each signature, with its count):"]
        lines += [f"{row} — ×{seen[key]}" for key, row in rows.items()]
    return "\n".join(lines) + "\n"


def initializer_array(model, name):
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    raise KeyError(name)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(summary(Path(arg)))
