"""What an attention head's relevance would cost computed over query chunks in an ONNX Loop (issue 26, part 2),
against the whole [queries, keys] chain the bounded-memory explainer emits today, in one process per cell.

The chain is one head's, as the low form emits it for AttnLRP in gradient form (docs/rules.md): the forward
recomputed (scores Q K^T, scale, a causal mask, Softmax) and the modified gradient sent back to Q, K^T and V
(uniform rule 0.5 at both products, Softmax's VJP). With queries in chunks of --chunk rows, a Loop computes
each chunk's rows of every [queries, keys] tensor, appends the chunk's gradient at Q and adds its share of the
gradients at K^T and V (sums over queries) to carried accumulators; the causal mask's rows are built inside
the body from positions. Every tensor the Loop holds is [chunk, keys] or [keys, head_dim]: linear in the prompt.

    python tools/bench_query_chunks.py --lengths 512 1024 2048 4096 --chunk 256 512
    python tools/bench_query_chunks.py --arch llama_35m --lengths 1024 2048 --chunk 512 1024 2048 0

With --arch, a decoder of tools/llm_fixtures.py (its TorchScript export) instead: its low-form explainer
compiled with each chunk size (0: the heads whole, no Loop), all in one process, their runs interleaved
(median of --repeats after a warm-up; AttnLRP, the next token at the last position).

Per cell: time (median of --repeats after a warm-up) and peak resident memory above the loaded session
(VmHWM, a fresh process per cell), onnxruntime CPU, --threads threads; the chunked outputs are checked
against the whole chain's. The graphs are written here by hand, not compiled: what the low form's Loops
(onnxlrp/compiler/query_chunks.py) cost against the whole chain, apart from the rest of a model, and how the
chunk's size trades the two (its QUERY_CHUNK).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

NEG = float(np.finfo(np.float32).min)


def _const(name: str, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _chain(p: str, q: str, go: str, start: str, stop: str) -> tuple[list, str, str, str]:
    """Nodes of one head's forward and gradient for the query rows [start, stop) (Q rows `q`, gradient rows
    `go`); returns (nodes, g_Q rows, g_K^T share, g_V share). Names prefixed with `p`."""
    n = lambda *args, **kw: helper.make_node(*args, **kw)  # noqa: E731
    nodes = [
        n("MatMul", [q, "Kt"], [p + "s0"]), n("Mul", [p + "s0", "scale"], [p + "s1"]),
        n("Range", [start, stop, "one"], [p + "qpos"]), n("Unsqueeze", [p + "qpos", "axis1"], [p + "qcol"]),
        n("Greater", ["kpos", p + "qcol"], [p + "future"]), n("Where", [p + "future", "neg", "zero"], [p + "mask"]),
        n("Add", [p + "s1", p + "mask"], [p + "s2"]), n("Softmax", [p + "s2"], [p + "prob"], axis=-1),
        n("MatMul", [go, "Vt"], [p + "gp0"]), n("Mul", [p + "gp0", "half"], [p + "gp"]),
        n("Mul", [p + "prob", p + "gp"], [p + "pg"]),
        n("ReduceSum", [p + "pg", "last"], [p + "w"], keepdims=1),
        n("Sub", [p + "gp", p + "w"], [p + "d"]), n("Mul", [p + "prob", p + "d"], [p + "gs"]),
        n("Mul", [p + "gs", "scale"], [p + "gs0"]),
        n("MatMul", [p + "gs0", "K"], [p + "gq0"]), n("Mul", [p + "gq0", "half"], [p + "gq"]),
        n("Transpose", [q], [p + "qt"], perm=[0, 1, 3, 2]),
        n("MatMul", [p + "qt", p + "gs0"], [p + "gk0"]), n("Mul", [p + "gk0", "half"], [p + "gk"]),
        n("Transpose", [p + "prob"], [p + "pt"], perm=[0, 1, 3, 2]),
        n("MatMul", [p + "pt", go], [p + "gv0"]), n("Mul", [p + "gv0", "half"], [p + "gv"]),
    ]
    return nodes, p + "gq", p + "gk", p + "gv"


def _shared() -> tuple[list, list]:
    """Nodes and constants both forms read: K, V^T, key positions, the sequence length."""
    n = helper.make_node
    nodes = [n("Transpose", ["Kt"], ["K"], perm=[0, 1, 3, 2]), n("Transpose", ["V"], ["Vt"], perm=[0, 1, 3, 2]),
             n("Shape", ["Q"], ["qshape"]), n("Gather", ["qshape", "two"], ["seq"], axis=0),
             n("Range", ["zero_i", "seq", "one"], ["kpos"])]
    constants = [_const("scale", 0.125), _const("half", 0.5), _const("neg", NEG), _const("zero", 0.0),
                 _const("one", 1, np.int64), _const("zero_i", 0, np.int64), _const("two", 2, np.int64),
                 _const("axis1", [1], np.int64), _const("last", [-1], np.int64)]
    return nodes, constants


def whole_model(head_dim: int):
    nodes, constants = _shared()
    chain, gq, gk, gv = _chain("w/", "Q", "gO", "zero_i", "seq")
    nodes += chain + [helper.make_node("Identity", [t], [o]) for t, o in ((gq, "gQ"), (gk, "gKt"), (gv, "gV"))]
    return _model(nodes, constants, head_dim)


def chunked_model(head_dim: int, chunk: int):
    n = helper.make_node
    nodes, constants = _shared()
    constants += [_const("chunk", chunk, np.int64), _const("chunk_less_one", chunk - 1, np.int64),
                  _const("empty_start", [0], np.int64), _const("axis2", [2], np.int64)]
    nodes += [n("Add", ["seq", "chunk_less_one"], ["seq_up"]), n("Div", ["seq_up", "chunk"], ["trips"]),
              n("Slice", ["Q", "empty_start", "empty_start", "axis2"], ["gq_init"]),
              n("Mul", ["Kt", "zero"], ["gk_init"]), n("Mul", ["V", "zero"], ["gv_init"]),
              n("Constant", [], ["cond"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True]))]
    body = [n("Mul", ["b/i", "chunk"], ["b/start"]), n("Add", ["b/start", "chunk"], ["b/end"]),
            n("Min", ["b/end", "seq"], ["b/stop"]),
            n("Unsqueeze", ["b/start", "empty_start"], ["b/start1"]), n("Unsqueeze", ["b/stop", "empty_start"], ["b/stop1"]),
            n("Slice", ["Q", "b/start1", "b/stop1", "axis2"], ["b/q"]),
            n("Slice", ["gO", "b/start1", "b/stop1", "axis2"], ["b/go"])]
    chain, gq, gk, gv = _chain("b/", "b/q", "b/go", "b/start", "b/stop")
    body += chain + [n("Concat", ["b/gq_in", gq], ["b/gq_out"], axis=2), n("Add", ["b/gk_in", gk], ["b/gk_out"]),
                     n("Add", ["b/gv_in", gv], ["b/gv_out"]), n("Identity", ["b/cond"], ["b/cond_out"])]
    f = TensorProto.FLOAT
    body_graph = helper.make_graph(
        body, "chunk",
        [helper.make_tensor_value_info("b/i", TensorProto.INT64, []), helper.make_tensor_value_info("b/cond", TensorProto.BOOL, [])]
        + [helper.make_tensor_value_info(f"b/{g}_in", f, None) for g in ("gq", "gk", "gv")],
        [helper.make_tensor_value_info("b/cond_out", TensorProto.BOOL, [])]
        + [helper.make_tensor_value_info(f"b/{g}_out", f, None) for g in ("gq", "gk", "gv")])
    nodes.append(n("Loop", ["trips", "cond", "gq_init", "gk_init", "gv_init"], ["gQ", "gKt", "gV"], body=body_graph))
    return _model(nodes, constants, head_dim)


def _model(nodes, constants, head_dim: int):
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("Q", f, [1, 1, "seq", head_dim]),
              helper.make_tensor_value_info("Kt", f, [1, 1, head_dim, "seq"]),
              helper.make_tensor_value_info("V", f, [1, 1, "seq", head_dim]),
              helper.make_tensor_value_info("gO", f, [1, 1, "seq", head_dim])]
    outputs = [helper.make_tensor_value_info(name, f, None) for name in ("gQ", "gKt", "gV")]
    model = helper.make_model(helper.make_graph(nodes, "head", inputs, outputs, constants),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _feeds(tokens: int, head_dim: int) -> dict:
    rng = np.random.default_rng(0)
    return {"Q": rng.standard_normal((1, 1, tokens, head_dim), np.float32),
            "Kt": rng.standard_normal((1, 1, head_dim, tokens), np.float32),
            "V": rng.standard_normal((1, 1, tokens, head_dim), np.float32),
            "gO": rng.standard_normal((1, 1, tokens, head_dim), np.float32)}


def _resident_peak_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def _session(model, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_mem_pattern = False      # as onnxlrp.runtime.default_session_options
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def child(tokens: int, head_dim: int, chunk: int, threads: int, repeats: int) -> dict:
    """One cell: memory of the first run, then the time; chunk 0 is the whole chain."""
    feeds = _feeds(tokens, head_dim)
    session = _session(chunked_model(head_dim, chunk) if chunk else whole_model(head_dim), threads)
    loaded = _resident_peak_mb()
    outputs = session.run(None, feeds)
    peak = _resident_peak_mb() - loaded
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - begin)
    np.savez(f"/tmp/bench_query_chunks_{tokens}_{chunk}.npz", *outputs)
    return {"ms": 1000 * float(np.median(times)), "mb": peak}


def _difference(tokens: int, chunk: int) -> float:
    whole = np.load(f"/tmp/bench_query_chunks_{tokens}_0.npz")
    chunked = np.load(f"/tmp/bench_query_chunks_{tokens}_{chunk}.npz")
    return max(float(np.linalg.norm(chunked[k] - whole[k]) / np.linalg.norm(whole[k])) for k in whole.files)


def explainers(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import llm_fixtures as F
    from onnxlrp import compiler
    from onnxlrp.runtime import default_session_options
    source = str(F.fixture(args.arch, "torchscript"))
    sessions = {}
    for chunk in args.chunk:
        compiler.QUERY_CHUNK = chunk
        compiled = compiler.compile_explainer(source, composite="attn_lrp", memory="low")
        sessions[chunk] = (ort.InferenceSession(compiled.model.SerializeToString(), default_session_options(args.threads),
                                                providers=["CPUExecutionProvider"]),
                           compiled.target_input, compiled.position_input)
        del compiled
    print(f"{args.arch}, low form, onnxruntime {ort.__version__}, {args.threads} threads, runs interleaved in one "
          f"process, median of {args.repeats} after a warm-up; chunk 0: the heads whole")
    print("| tokens | " + " | ".join(f"chunk {c} s" for c in args.chunk) + " |\n|" + "---:|" * (len(args.chunk) + 1))
    for tokens in args.lengths:
        ids = np.concatenate([[2], np.random.default_rng(0).integers(4, 8000, size=tokens - 1)])[None].astype(np.int64)
        times = {chunk: [] for chunk in sessions}
        order = list(sessions.items())
        for round_ in range(args.repeats + 1):
            for chunk, (session, target, position) in (order if round_ % 2 == 0 else order[::-1]):
                feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), target: np.full(1, -1, np.int64),
                         position: np.full(1, tokens - 1, np.int64)}
                begin = time.perf_counter()
                session.run(None, feeds)
                times[chunk].append(time.perf_counter() - begin)
        print(f"| {tokens} | " + " | ".join(f"{np.median(t[1:]):.2f}" for t in times.values()) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--chunk", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", type=int, nargs=2, metavar=("TOKENS", "CHUNK"), help=argparse.SUPPRESS)
    parser.add_argument("--arch", help="a decoder of tools/llm_fixtures.py: its explainer at each chunk size")
    args = parser.parse_args()
    if args.arch:
        explainers(args)
        return
    if args.child:
        print(json.dumps(child(*args.child[:1], args.head_dim, args.child[1], args.threads, args.repeats)))
        return
    print(f"one attention head, head_dim {args.head_dim}, onnxruntime {ort.__version__}, {args.threads} threads, "
          f"median of {args.repeats} runs; MB: peak resident memory above the loaded session, a process per cell")
    header = ["tokens", "whole ms", "whole MB"] + [f"{h} {c}" for c in args.chunk for h in ("chunk ms", "chunk MB", "rel. L2")]
    print("| " + " | ".join(header) + " |\n|" + "---:|" * len(header))
    for tokens in args.lengths:
        cells = []
        for chunk in [0] + args.chunk:
            done = subprocess.run([sys.executable, __file__, "--child", str(tokens), str(chunk), "--head-dim",
                                   str(args.head_dim), "--threads", str(args.threads), "--repeats", str(args.repeats)],
                                  capture_output=True, text=True, check=True)
            cell = json.loads(done.stdout.strip().splitlines()[-1])
            cells += [f"{cell['ms']:.1f}", f"{cell['mb']:.0f}"]
            if chunk:
                cells.append(f"{_difference(tokens, chunk):.1e}")
        print(f"| {tokens} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
