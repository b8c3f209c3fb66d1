"""Shared by the corpus scripts (each runs in its own exporter's environment): save a model into
models/corpus/ and record it in models/corpus/manifest.json."""
from __future__ import annotations

import json
import os

import onnx

# ONNXLRP_CORPUS points elsewhere for the full-size architecture checks (tools/zoo/), never committed
CORPUS = os.environ.get("ONNXLRP_CORPUS") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                            "models", "corpus")
MANIFEST = os.path.join(CORPUS, "manifest.json")


def record(path: str, exporter: str, family: str, shape: list[int], relu_only: bool, notes: str = "",
           inputs: dict | None = None, output: str | None = None) -> None:
    """relu_only: every nonlinearity is Relu / MaxPool and every BatchNorm folds, so LRP-0 must equal
    gradient x input (docs/rules.md); otherwise the corpus test checks conservation instead."""
    model = onnx.load(path, load_external_data=False)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    entries = json.load(open(MANIFEST)) if os.path.exists(MANIFEST) else {}
    entries[os.path.basename(path)] = {
        "exporter": exporter, "family": family, "opset": opset, "ir_version": model.ir_version,
        "input_shape": shape, "relu_only": relu_only, "ops": sorted({n.op_type for n in model.graph.node}),
        "notes": notes, **({"inputs": inputs} if inputs else {}), **({"output": output} if output else {}),
    }
    os.makedirs(CORPUS, exist_ok=True)
    with open(MANIFEST + ".tmp", "w") as f:
        json.dump(dict(sorted(entries.items())), f, indent=1)
    os.replace(MANIFEST + ".tmp", MANIFEST)
    print(f"{os.path.basename(path)}: opset {opset}, {len(model.graph.node)} nodes")


def path_for(name: str) -> str:
    os.makedirs(CORPUS, exist_ok=True)
    return os.path.join(CORPUS, name)
