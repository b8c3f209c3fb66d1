"""What an explanation holds at its peak: the tensors alive when the most bytes are, in onnxruntime's own order.

    python tools/profile_memory.py --arch llama_35m --tokens 2048 --memory low
    python tools/profile_memory.py --arch qwen2_05b --tokens 1024 --memory default --top 30
    python tools/profile_memory.py --arch llama --export dynamo_dynamic --tokens 2048

One profiled run (onnxlrp's session options, --threads threads) gives the order onnxruntime ran the nodes in
and each node's output size; with the optimised graph (which names the same nodes) each tensor lives from the
node that makes it to the last node that reads it. The sum over the tensors alive is what the run holds at
least (the arena's slack and the weights come on top: compare with tools/bench_long.py's resident memory).
It printed what the fixes of docs/performance.md, "Long prompts", had to remove: every head's probabilities
held at once, a causal mask rebuilt in the relevance pass, the mask's index grid. Decoders from
tools/llm_fixtures.py (TorchScript export, or --export a dynamo one), AttnLRP, the next token at the last position.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from onnxlrp.canonical.shapes import outer_reads, subgraphs  # noqa: E402
from onnxlrp.compiler import compile_explainer  # noqa: E402
from onnxlrp.model import is_large, write_with_external_data  # noqa: E402
from onnxlrp.runtime import default_session_options  # noqa: E402


def alive_at_peak(model: onnx.ModelProto, feeds: dict, threads: int,
                  logits: str) -> dict[str, tuple[int, str, int, list]]:
    """For the whole run and for its relevance pass (once the explained `logits` exist): (peak bytes, the node
    run when they were alive, its index, [(bytes, tensor)] alive then, largest first)."""
    work = Path(tempfile.mkdtemp(prefix="onnxlrp-memory-"))
    options = default_session_options(threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(work / "run")
    options.optimized_model_filepath = str(work / "optimised.onnx")
    large = is_large(model)
    source = str(work / "explainer.onnx") if large else model.SerializeToString()
    if large:   # over protobuf's 2 GiB: files with the weights beside them, the optimised one too
        write_with_external_data(model, Path(source), work / "explainer.onnx.data", location="explainer.onnx.data")
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         "optimised.onnx.data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)
    events = [e for e in json.loads(Path(session.end_profiling()).read_text())
              if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    nodes = _nodes(onnx.load(options.optimized_model_filepath, load_external_data=False).graph)
    order = [e["name"][:-len("_kernel_time")] for e in events]
    # each time a tensor is made, the last read before it is made again (a Loop's body runs once per iteration)
    dies, pending = {}, {}
    for k in range(len(order) - 1, -1, -1):
        for tensor in nodes[order[k]].output:
            dies[k, tensor] = pending.pop(tensor, k)
        for tensor in list(nodes[order[k]].input) + sorted(outer_reads(nodes[order[k]])):
            pending.setdefault(tensor, k)
    outputs = {o.name for o in model.graph.output}
    relevance_pass = next(k for k, name in enumerate(order) if logits in nodes[name].output)
    alive, death, peaks = {}, {}, {"run": (0, "", 0, []), "relevance pass": (0, "", 0, [])}
    for k, (name, event) in enumerate(zip(order, events)):
        made = [o for o in nodes[name].output if o]
        for tensor in made:   # the profile gives a node's outputs together
            alive[tensor] = int(event["args"].get("output_size", 0)) // max(1, len(made))
            death[tensor] = dies[k, tensor]
        held = sum(alive.values())
        for part in [p for p in peaks if p == "run" or k >= relevance_pass]:
            if held > peaks[part][0]:
                peaks[part] = (held, name, k, sorted(((size, t) for t, size in alive.items()), reverse=True))
        for tensor in [t for t in alive if death[t] <= k and t not in outputs]:
            del alive[tensor]
    return peaks


def _nodes(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """The graph's nodes by name, those of its nodes' subgraphs (a Loop's body) included."""
    nodes = {}
    for node in graph.node:
        nodes[node.name] = node
        for subgraph in subgraphs(node):
            nodes.update(_nodes(subgraph))
    return nodes


def decoder_feeds(compiled, tokens: int) -> dict:
    import llm_fixtures as F
    rng = np.random.default_rng(0)
    ids = np.concatenate([[2], rng.integers(4, len(F.WORDS), size=tokens - 1)])[None].astype(np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), compiled.target_input: np.full(1, -1, np.int64),
            compiled.position_input: np.full(1, tokens - 1, np.int64)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="llama_35m")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--memory", default="low", choices=["default", "low"])
    parser.add_argument("--export", default="torchscript", choices=["torchscript", "dynamo_dynamic", "dynamo_opset23"],
                        help="which of tools/llm_fixtures.py's exports (dynamo: the small architectures only)")
    parser.add_argument("--composite", default="attn_lrp")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    import llm_fixtures as F
    compiled = compile_explainer(str(F.fixture(args.arch, args.export)), composite=args.composite,
                                 memory=args.memory)
    peaks = alive_at_peak(compiled.model, decoder_feeds(compiled, args.tokens), args.threads, compiled.logits)
    print(f"{args.arch} ({args.export}), {args.tokens} tokens, memory={args.memory}")
    for part, (held, node, k, tensors) in peaks.items():
        print(f"\n{part}: at least {held / 2**20:.0f} MiB alive at node {k} ({node})")
        for size, tensor in tensors[:args.top]:
            print(f"{size / 2**20:10.1f} MiB  {tensor}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
