"""Before/after timing of one compiler pass: the explainer compiled with the pass off and on, run alternately.

    python tools/bench_passes.py MODEL.onnx PASS [PASS ...] [--composite epsilon_plus_flat] [--batch 1]
        [--rounds 12]

PASS is one of: reuse (Epsilon reuses the forward z), flip (stride-1 transposes as flipped-kernel Conv),
fold (stabiliser folded into the bias where z >= 0), stab (three-pass instead of four-pass stabiliser),
gamma (Gamma's negative branch left out after ReLUs), relu (relu(z) + eps as the stabilised denominator
of Epsilon layers and joins whose relevance is zero where z <= 0), sign (the stabiliser's sign known when
compiling beyond z >= 0: Gamma's gated groups, AlphaBeta's inhibiting group), mask (gates as a 0/1 Mul
instead of Where), shapes (constant reshape targets that keep the shapes known to onnxruntime), ones
(Flat's transpose summed over channels first), zbox (W-^T s as W^T s - W+^T s), shared (Gamma's two
branches from the forward z and one shared Conv), fanout (Sum of x * c_k over a tensor's readers as
x * Sum c_k), own (identity-transformed weights are the forward op's own initialiser, not a copy),
pattern (a session option, not a pass: onnxruntime's memory-pattern planner left off).
"Off" swaps the pass's decision function for one that always declines, so both graphs come from the same
code. Both sessions stay alive and run in turn, each first in every other round (the second run of a pair
is measurably slower on this machine), so drifts of the machine's speed hit both alike; the median of
the rounds after the first two is reported.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import onnxlrp.compiler as compiler  # noqa: E402
import onnxlrp.ops.context as context  # noqa: E402
import onnxlrp.ops.conv as conv  # noqa: E402
import onnxlrp.ops.weighted as weighted  # noqa: E402
from onnxlrp import bench, runtime  # noqa: E402
from onnxlrp.compiler import compile_explainer  # noqa: E402
from onnxlrp.rules import ONES  # noqa: E402
from onnxlrp.zero_relevance import ZeroRelevance  # noqa: E402


def _four_pass_stabilize(self, u, eps):
    if eps == 0:
        return u
    nonneg = self.op("GreaterOrEqual", [u, self.scalar(0.0)])
    return self.op("Where", [nonneg, self.op("Add", [u, self.scalar(eps)]), self.op("Sub", [u, self.scalar(eps)])])


def _nonnegative_only(group, computed, inputs):
    return int(bool(computed) and all(weighted._term_sign(t, inputs) == 1 for t in computed))


def _gated_by_where(ctx, layer, s, gate):
    mask = ctx.b.op("Greater" if gate == "positive" else "Less", [layer.output(), ctx.b.scalar(0.0)])
    return ctx.b.op("Where", [mask, s, ctx.b.scalar(0.0)])


_session_options = runtime.default_session_options


def _with_memory_pattern(threads):
    options = _session_options(threads)
    options.enable_mem_pattern = True
    return options


def _each_transposed(ctx, layer, s, weights):
    return {weight: layer.transpose(s, weight) for weight in weights}


OFF = {
    "reuse": (weighted, "_reuses_forward", lambda layer, term: False),
    "flip": (conv.ConvMap, "_flipped_pads", lambda self: None),
    "fold": (weighted, "_term_sign", lambda term, inputs: 0),
    "stab": (context.Builder, "stabilize", _four_pass_stabilize),
    "gamma": (ZeroRelevance, "only_where_positive", lambda self, node: False),
    "relu": (ZeroRelevance, "relu_of", lambda self, node: None),
    "sign": (weighted, "_known_sign", _nonnegative_only),
    "mask": (weighted, "_gated", _gated_by_where),
    "shapes": (context.Context, "reshape_back", lambda self, r, j=0, i=0: self.b.reshape_like(r, self.x(i))),
    "ones": (conv.ConvMap, "_ones_transpose", lambda self, s: self._general_transpose(s, ONES)),
    "zbox": (weighted, "_transposes", _each_transposed),
    "shared": (weighted, "_denominators_from_forward", lambda *args: None),
    "fanout": (compiler, "factor_fanout_products", lambda nodes, keep=frozenset(): nodes),
    "own": (weighted.LinearMap, "_forward_weight", lambda self, transform: None),
    "pattern": (runtime, "default_session_options", _with_memory_pattern),
}


@contextmanager
def switched_off(names: list[str]):
    originals = []
    for name in names:
        owner, attribute, replacement = OFF[name]
        originals.append((owner, attribute, getattr(owner, attribute)))
        setattr(owner, attribute, replacement)
    try:
        yield
    finally:
        for owner, attribute, original in originals:
            setattr(owner, attribute, original)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("switch", nargs="+", choices=sorted(OFF), help="passes switched off together")
    parser.add_argument("--composite", default="epsilon_plus_flat")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args(argv)
    composite = bench.composite_for(args.composite)

    def session():
        model = compile_explainer(args.model, composite=composite).model
        return ort.InferenceSession(model.SerializeToString(), runtime.default_session_options(args.threads),
                                    providers=["CPUExecutionProvider"])

    with switched_off(args.switch):
        sessions = [session()]
    sessions.append(session())
    x = bench.input_batch(args.model, args.batch)
    feeds = {sessions[0].get_inputs()[0].name: x, "target": np.full(args.batch, -1, np.int64)}
    times = [[], []]
    for round_ in range(args.rounds):
        for k in ((0, 1) if round_ % 2 == 0 else (1, 0)):  # either may go first: no order bias
            start = time.perf_counter()
            sessions[k].run(None, feeds)
            times[k].append((time.perf_counter() - start) * 1e3)
    before, after = (statistics.median(t[2:]) for t in times)
    print(f"{Path(args.model).name} {args.composite} batch {args.batch}, {'+'.join(args.switch)}: "
          f"off {before:.1f} ms, on {after:.1f} ms, speed-up {before / after:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
