"""Where an explanation's time goes: onnxruntime's profiler, kernel time summed per op type over one run.

    python tools/profile_ops.py /tmp/onnxlrp-bench/resnet50.onnx --composite epsilon_plus_flat --inference
    python tools/profile_ops.py model.onnx --composite epsilon_gamma_box --batch 8 --nodes ConvTranspose MaxPool

The explainer is compiled as tools/bench.py compiles it and run with onnxlrp's session options
(`default_session_options`, --threads threads), three warm-up runs, then one profiled run; --inference
profiles the model itself the same way. tools/bench.py caches the ResNet-50 and VGG-16 it builds in
/tmp/onnxlrp-bench.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onnxlrp import bench  # noqa: E402
from onnxlrp.compiler import compile_explainer  # noqa: E402
from onnxlrp.runtime import default_session_options  # noqa: E402


def profile(model: bytes, feeds: dict, threads: int, nodes: set[str]) -> tuple[float, dict]:
    """(ms of the profiled run, {op type: [ms, node count]}), printing the nodes of the op types in `nodes`."""
    options = default_session_options(threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="onnxlrp-profile-")) / "run")
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    for _ in range(4):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    last = [e for e in events if e.get("name") == "model_run"][-1]
    per_op = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        if (e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
                and last["ts"] <= e["ts"] <= last["ts"] + last["dur"]):
            op = e["args"]["op_name"]
            per_op[op][0] += e["dur"] / 1000
            per_op[op][1] += 1
            if op in nodes:
                print(f"    {op} {e['name'][:-len('_kernel_time')]}: {e['dur'] / 1000:.2f} ms")
    return last["dur"] / 1000, per_op


def show(label: str, ms: float, per_op: dict, top: int) -> None:
    print(f"{label}: {ms:.1f} ms\n\n| op | ms | nodes |\n|---|---:|---:|")
    for op, (op_ms, count) in sorted(per_op.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"| {op} | {op_ms:.2f} | {count} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--composite", default="epsilon_plus_flat")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--inference", action="store_true", help="profile the model itself too")
    parser.add_argument("--nodes", nargs="*", default=[], help="op types whose nodes are listed one by one")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    x = bench.input_batch(args.model, args.batch)
    print(f"{bench.machine()}; {args.threads} threads; batch {args.batch}\n")
    if args.inference:
        model = Path(args.model).read_bytes()
        name = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).get_inputs()[0].name
        show("inference", *profile(model, {name: x}, args.threads, set(args.nodes)), args.top)
    compiled = compile_explainer(args.model, composite=bench.composite_for(args.composite))
    feeds = {compiled.inputs[0]: x, compiled.target_input: np.full(len(x), -1, np.int64)}
    show(args.composite, *profile(compiled.model.SerializeToString(), feeds, args.threads, set(args.nodes)), args.top)


if __name__ == "__main__":
    main()
