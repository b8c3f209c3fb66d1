"""Formulations tried for ResNet-50's overhead above its convolutions (issue 26, part 1), each timed against
what the explainer emits, op for op, in one process (onnxruntime, CPU, --threads threads, median of --repeats
after warm-ups), and checked to compute the same numbers:

  strided transposes: ConvTranspose (emitted)  vs  polyphase Conv + DepthToSpace + Slice, and for 1x1
                      kernels a 1x1 Conv + zero-stuffing (Reshape, Pad, Reshape, Slice);
  max-pool routing:   MaxPool with indices + ScatterElements (emitted)  vs  the winners without indices:
                      the window offsets as strided Slices, ArgMax over them (the first maximum, as
                      MaxPool's indices), ScatterElements; and, for windows that do not overlap, each
                      window put on the last axis by a transpose, ArgMax, a one-hot Where, the transpose
                      back.

    python tools/bench_cnn_alternatives.py --batches 1 8

Shapes: ResNet-50's strided layers (stem 7x7/2, the 3x3/2 and 1x1/2 of the first block of stages 2-4) and
max pools (ResNet's 3x3/2 stem pool, VGG-16's first and last 2x2/2 pools).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from onnxlrp import bench  # noqa: E402

THREADS = 2


def _session(nodes, initializers: dict, inputs: dict):
    graph = helper.make_graph(
        nodes, "alternative", [helper.make_tensor_value_info(n, TensorProto.FLOAT, v.shape) for n, v in inputs.items()],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, inputs)[0]


def _ms(run, repeats: int) -> float:
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def _ints(values):
    return np.asarray(values, np.int64)


def polyphase_weight(w: np.ndarray, stride: int, pad: int):
    """The transpose of Conv(w, stride, pad) as one stride-1 Conv whose stride**2 output channel groups are the
    output's phases (DepthToSpace CRD order): (weight, offset of its first tap, its kernel size)."""
    out_c, in_c, k, _ = w.shape
    taps = [(r + pad - u) // stride for r in range(stride) for u in range(k) if (r + pad - u) % stride == 0]
    first, size = min(taps), max(taps) - min(taps) + 1
    phased = np.zeros((in_c, stride, stride, out_c, size, size), np.float32)
    for rh in range(stride):
        for th in range(size):
            u = rh + pad - stride * (th + first)
            for rw in range(stride):
                for tw in range(size):
                    v = rw + pad - stride * (tw + first)
                    if 0 <= u < k and 0 <= v < k:
                        phased[:, rh, rw, :, th, tw] = w[:, :, u, v].T
    return phased.reshape(in_c * stride * stride, out_c, size, size), first, size


def strided_transposes(n: int, out_c: int, in_c: int, k: int, stride: int, pad: int, out_size: int, in_size: int,
                       repeats: int) -> str:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(out_c, in_c, k, k)).astype(np.float32)
    s = {"s": rng.normal(size=(n, out_c, out_size, out_size)).astype(np.float32)}
    extra = in_size - (stride * (out_size - 1) + k - 2 * pad)
    emitted = _session([helper.make_node("ConvTranspose", ["s", "w"], ["out"], kernel_shape=[k, k],
                                         strides=[stride] * 2, pads=[pad] * 4, output_padding=[extra] * 2)],
                       {"w": w}, s)
    phased, first, size = polyphase_weight(w, stride, pad)
    phases = -(-in_size // stride)
    end_pad = max(0, phases - out_size + first + size - 1)
    crop = {"starts": _ints([0, 0]), "ends": _ints([in_size, in_size]), "axes": _ints([2, 3])}
    polyphase = _session([
        helper.make_node("Conv", ["s", "w"], ["z"], kernel_shape=[size, size], pads=[-first] * 2 + [end_pad] * 2),
        helper.make_node("DepthToSpace", ["z"], ["d"], blocksize=stride, mode="CRD"),
        helper.make_node("Slice", ["d", "starts", "ends", "axes"], ["out"])], {"w": phased, **crop}, s)
    reference = emitted()
    error = np.abs(polyphase() - reference).max() / np.abs(reference).max()
    row = (f"| {k}x{k}/{stride} {out_c}->{in_c} at {out_size}->{in_size} | {n} | {_ms(emitted, repeats):.2f} | "
           f"{_ms(polyphase, repeats):.2f} ({error:.0e}) |")
    if k == 1 and pad == 0:
        stuffed = _session([
            helper.make_node("Conv", ["s", "w"], ["z"], kernel_shape=[1, 1]),
            helper.make_node("Reshape", ["z", "spread"], ["z6"]),
            helper.make_node("Pad", ["z6", "zeros"], ["p6"]),
            helper.make_node("Reshape", ["p6", "image"], ["d"]),
            helper.make_node("Slice", ["d", "starts", "ends", "axes"], ["out"])],
            {"w": w.transpose(1, 0, 2, 3).copy(), "spread": _ints([n, in_c, out_size, 1, out_size, 1]),
             "zeros": _ints([0] * 6 + [0, 0, 0, stride - 1, 0, stride - 1]),
             "image": _ints([n, in_c, out_size * stride, out_size * stride]), **crop}, s)
        error = np.abs(stuffed() - reference).max() / np.abs(reference).max()
        return row + f" {_ms(stuffed, repeats):.2f} ({error:.0e}) |"
    return row + " |"


def max_pool_routing(n: int, channels: int, size: int, k: int, stride: int, pad: int, repeats: int) -> str:
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(size=(n, channels, size, size)), 0).astype(np.float32)
    x[:, :, :5, :5] = 1.0     # ties: the first maximum of a window wins
    out_size = (size + 2 * pad - k) // stride + 1
    feeds = {"x": x, "r": rng.normal(size=(n, channels, out_size, out_size)).astype(np.float32)}
    pool = dict(kernel_shape=[k, k], strides=[stride] * 2, pads=[pad] * 4)
    per_plane = {"planes": _ints([0, 0, -1]), "zero": np.float32(0), "shape": _ints(x.shape)}
    emitted = _session([
        helper.make_node("MaxPool", ["x"], ["y", "indices"], **pool),
        helper.make_node("Reshape", ["indices", "planes"], ["flat"]),
        helper.make_node("Sub", ["flat", "plane_starts"], ["within"]),
        helper.make_node("Mul", ["x", "zero"], ["z"]), helper.make_node("Reshape", ["z", "planes"], ["zeros"]),
        helper.make_node("Reshape", ["r", "planes"], ["rr"]),
        helper.make_node("ScatterElements", ["zeros", "within", "rr"], ["o"], axis=2, reduction="add"),
        helper.make_node("Reshape", ["o", "shape"], ["out"])],
        {**per_plane, "plane_starts": (np.arange(n * channels) * size * size).reshape(n, channels, 1)}, feeds)
    nodes, offsets, source = [], [], "x"
    if pad:
        nodes.append(helper.make_node("Pad", ["x", "pads", "minus_inf"], ["padded"]))
        source = "padded"
    last = stride * (out_size - 1) + 1
    inits = {"pads": _ints([0, 0, pad, pad] * 2), "minus_inf": np.float32(-np.inf), "axes": _ints([2, 3]),
             "steps": _ints([stride] * 2), "new_axis": _ints([2])}
    for u in range(k):
        for v in range(k):
            inits[f"start{u}{v}"], inits[f"end{u}{v}"] = _ints([u, v]), _ints([u + last, v + last])
            nodes += [helper.make_node("Slice", [source, f"start{u}{v}", f"end{u}{v}", "axes", "steps"], [f"w{u}{v}"]),
                      helper.make_node("Unsqueeze", [f"w{u}{v}", "new_axis"], [f"o{u}{v}"])]
            offsets.append(f"o{u}{v}")
    inits["shift"] = _ints([(u - pad) * size + (v - pad) for u in range(k) for v in range(k)])
    inits["corner"] = ((np.arange(out_size) * stride)[:, None] * size + np.arange(out_size) * stride).reshape(1, 1, -1)
    nodes += [helper.make_node("Concat", offsets, ["windows"], axis=2),
              helper.make_node("ArgMax", ["windows"], ["winner"], axis=2, keepdims=0),
              helper.make_node("Gather", ["shift", "winner"], ["shifted"]),
              helper.make_node("Reshape", ["shifted", "planes"], ["shifted_flat"]),
              helper.make_node("Add", ["shifted_flat", "corner"], ["within"]),
              helper.make_node("Mul", ["x", "zero"], ["z"]), helper.make_node("Reshape", ["z", "planes"], ["zeros"]),
              helper.make_node("Reshape", ["r", "planes"], ["rr"]),
              helper.make_node("ScatterElements", ["zeros", "within", "rr"], ["o"], axis=2, reduction="add"),
              helper.make_node("Reshape", ["o", "shape"], ["out"])]
    indexless = _session(nodes, {**inits, **per_plane}, feeds)
    row = (f"| {k}x{k}/{stride} pad {pad}, {channels} x {size}x{size} | {n} | {_ms(emitted, repeats):.2f} | "
           f"{_ms(indexless, repeats):.2f} ({_same(indexless(), emitted())}) |")
    if k != stride or pad or size % k:
        return row + " |"
    # windows that do not overlap: a reshape and a transpose put each window on the last axis, ArgMax picks
    # its first maximum, a one-hot mask routes the relevance, the inverse transpose puts it back
    windows = _session([
        helper.make_node("Reshape", ["x", "spread"], ["x6"]),
        helper.make_node("Transpose", ["x6"], ["xt"], perm=[0, 1, 2, 4, 3, 5]),
        helper.make_node("Reshape", ["xt", "lined"], ["xl"]),
        helper.make_node("ArgMax", ["xl"], ["winner"], axis=4, keepdims=1),
        helper.make_node("Equal", ["winner", "offsets"], ["won"]),
        helper.make_node("Unsqueeze", ["r", "last"], ["r5"]),
        helper.make_node("Where", ["won", "r5", "zero"], ["routed"]),
        helper.make_node("Reshape", ["routed", "unlined"], ["rt"]),
        helper.make_node("Transpose", ["rt"], ["r6"], perm=[0, 1, 2, 4, 3, 5]),
        helper.make_node("Reshape", ["r6", "shape"], ["out"])],
        {"spread": _ints([n, channels, out_size, k, out_size, k]),
         "lined": _ints([n, channels, out_size, out_size, k * k]),
         "offsets": _ints(np.arange(k * k)), "last": _ints([4]), "zero": np.float32(0),
         "unlined": _ints([n, channels, out_size, out_size, k, k]), "shape": _ints(x.shape)}, feeds)
    return row + f" {_ms(windows, repeats):.2f} ({_same(windows(), emitted())}) |"


def _same(a: np.ndarray, b: np.ndarray) -> str:
    return "equal" if np.array_equal(a, b) else f"DIFFERENT by {np.abs(a - b).max():.1e}"


def main() -> None:
    global THREADS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    THREADS = args.threads
    print(f"{bench.machine()}; {args.threads} threads; ms, median of {args.repeats}\n")
    print("| strided transpose | batch | ConvTranspose | polyphase Conv (max error) | 1x1 Conv + zero-stuffing |")
    print("|---|---:|---:|---:|---:|")
    for n in args.batches:
        for shape in [(64, 3, 7, 2, 3, 112, 224), (128, 128, 3, 2, 1, 28, 56), (256, 256, 3, 2, 1, 14, 28),
                      (512, 512, 3, 2, 1, 7, 14), (512, 256, 1, 2, 0, 28, 56), (1024, 512, 1, 2, 0, 14, 28),
                      (2048, 1024, 1, 2, 0, 7, 14)]:
            print(strided_transposes(n, *shape, args.repeats), flush=True)
    print("\n| max-pool routing | batch | MaxPool indices + scatter | strided windows + ArgMax | "
          "windows by transpose + ArgMax |")
    print("|---|---:|---:|---:|---:|")
    for n in args.batches:
        for shape in [(64, 112, 3, 2, 1), (64, 224, 2, 2, 0), (512, 14, 2, 2, 0)]:
            print(max_pool_routing(n, *shape, args.repeats), flush=True)


if __name__ == "__main__":
    main()
