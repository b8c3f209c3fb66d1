"""What compiling a model costs: peak resident memory and time, each stage in a fresh process.

    python tools/compile_memory.py ~/.cache/onnxlrp/llm/qwen2_05b-s0/torchscript.onnx --composite attn_lrp --memory low
    python tools/compile_memory.py /tmp/onnxlrp-bench/vgg16.onnx --composite epsilon_plus_flat

Stages (EpsilonGammaBox with onnxlrp bench's bounds -3, 3): `compile_explainer(path)` alone (what `onnxlrp compile` does before writing), and `Explainer(path)` with
its first explanation (load, compile, session, one run: what a user's first call costs). The explanation's input
is 64 token ids for a model that takes `input_ids` (with an all-ones `attention_mask` where it takes one), else
normal noise of each float input's shape at batch 1. Peak memory is the child's VmHWM, which includes the loaded model;
compare it with the model file's size. Run it from another checkout (`PYTHONPATH=OTHER python
tools/compile_memory.py ...`) for a side-by-side of two versions.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _stored_mb(path: Path) -> float:
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    files = {entry.value for tensor in model.graph.initializer for entry in tensor.external_data
             if entry.key == "location"}
    return (path.stat().st_size + sum((path.parent / name).stat().st_size for name in files)) / 1e6


def _child(stage: str, model: str, composite: str, memory: str) -> None:
    import numpy as np

    from onnxlrp import Explainer
    from onnxlrp.bench import composite_for
    import onnx

    from onnxlrp.compiler import compile_explainer
    composite = composite_for(composite)   # EpsilonGammaBox with the benchmark's bounds
    start = time.perf_counter()
    if stage == "compile":
        compile_explainer(model, composite=composite, memory=memory)
    else:
        explainer = Explainer(model, composite=composite, memory=memory)
        names = [v.name for v in explainer.model.graph.input]
        if "input_ids" in names:
            ids = (np.arange(64, dtype=np.int64) % 1000)[None]
            feeds = {"input_ids": ids} | ({"attention_mask": np.ones_like(ids)} if "attention_mask" in names else {})
            explainer.explain(feeds)
        else:   # noise of the model's input shape, batch 1 (free dims 1), built without a session of its own
            rng = np.random.default_rng(0)
            feeds = {v.name: rng.normal(size=[1] + [d.dim_value or 1 for d in v.type.tensor_type.shape.dim[1:]])
                     .astype(np.float32) for v in explainer.model.graph.input
                     if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
            explainer.explain(feeds if len(feeds) > 1 else next(iter(feeds.values())))
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_mb": _peak_mb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--composite", default="epsilon_plus_flat")
    parser.add_argument("--memory", default="default", choices=["default", "low"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.model, args.composite, args.memory)
        return
    print(f"{args.model}: {_stored_mb(Path(args.model)):.0f} MB with its external data, {args.composite}, "
          f"memory={args.memory}")
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(ROOT))
    for stage, label in (("compile", "compile_explainer"), ("explain", "Explainer + first explanation")):
        out = subprocess.run([sys.executable, __file__, args.model, "--composite", args.composite, "--memory",
                              args.memory, "--child", stage], capture_output=True, text=True, env=env)
        if out.returncode:
            print(f"{label}: failed\n{out.stderr[-2000:]}")
            continue
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{label}: {result['seconds']:.1f} s, peak {result['peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
