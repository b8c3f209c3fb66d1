"""Where an explanation's time goes: onnxruntime's profiler, kernel time summed per op type over one run.

    python tools/profile_ops.py /tmp/onnxlrp-bench/resnet50.onnx --composite epsilon_plus_flat --inference
    python tools/profile_ops.py model.onnx --composite epsilon_gamma_box --batch 8 --nodes ConvTranspose MaxPool
    python tools/profile_ops.py --arch qwen3_06b --tokens 512 --composite attn_lrp --memory default low --inference

The explainer is compiled as tools/bench.py compiles it and run with onnxlrp's session options
(`default_session_options`, --threads threads), three warm-up runs, then one profiled run; --inference
profiles the model itself the same way. tools/bench.py caches the ResNet-50 and VGG-16 it builds in
/tmp/onnxlrp-bench. With --arch, a decoder of tools/llm_fixtures.py (its TorchScript export) on --tokens
tokens, explained at the last position, in each --memory form.
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
from onnxlrp.runtime import default_session_options, new_session  # noqa: E402


def profile(model, feeds: dict, threads: int, nodes: set[str]) -> tuple[float, dict]:
    """(ms of the profiled run, {op type: [ms, node count]}), printing the nodes of the op types in `nodes`.
    `model`: a path, bytes or a ModelProto."""
    options = default_session_options(threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="onnxlrp-profile-")) / "run")
    session = new_session(model, options, ["CPUExecutionProvider"])
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


def decoder(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import llm_fixtures as F
    path = F.fixture(args.arch, "torchscript")
    ids = F.sample_ids(1, args.tokens)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    print(f"{bench.machine()}; {args.threads} threads; {args.arch}, {args.tokens} tokens\n")
    if args.inference:
        show("inference", *profile(str(path), feeds, args.threads, set(args.nodes)), args.top)
    for memory in args.memory:
        compiled = compile_explainer(str(path), composite=args.composite, memory=memory)
        explain_feeds = {**feeds, compiled.target_input: np.full(1, -1, np.int64),
                         compiled.position_input: np.full(1, args.tokens - 1, np.int64)}
        show(f"{args.composite}, memory {memory}",
             *profile(compiled.model, explain_feeds, args.threads, set(args.nodes)), args.top)
        del compiled


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="an ONNX image model (or --arch)")
    parser.add_argument("--composite", default="epsilon_plus_flat")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--inference", action="store_true", help="profile the model itself too")
    parser.add_argument("--nodes", nargs="*", default=[], help="op types whose nodes are listed one by one")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--arch", help="a decoder of tools/llm_fixtures.py instead of MODEL (needs torch, "
                                       "transformers to build it)")
    parser.add_argument("--tokens", type=int, default=512, help="with --arch: the prompt's length")
    parser.add_argument("--memory", nargs="+", default=["default"], choices=["default", "low"],
                        help="with --arch: the explainer's forms, profiled in turn")
    args = parser.parse_args(argv)
    if (args.model is None) == (args.arch is None):
        parser.error("give an ONNX model or --arch, one of the two")
    if args.arch:
        return decoder(args)
    x = bench.input_batch(args.model, args.batch)
    print(f"{bench.machine()}; {args.threads} threads; batch {args.batch}\n")
    if args.inference:
        model = Path(args.model).read_bytes()
        name = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).get_inputs()[0].name
        show("inference", *profile(model, {name: x}, args.threads, set(args.nodes)), args.top)
    compiled = compile_explainer(args.model, composite=bench.composite_for(args.composite))
    feeds = {compiled.inputs[0]: x, compiled.target_input: np.full(len(x), -1, np.int64)}
    show(args.composite, *profile(compiled.model, feeds, args.threads, set(args.nodes)), args.top)


if __name__ == "__main__":
    main()
