"""Does the CUDA provider give the CPU's relevance? (Needs onnxruntime-gpu and a GPU.)

    python tools/gpu_parity.py MODEL [MODEL...] [--batch 8]

For each model and composite: the relevance on the CPU, on CUDA as onnxlrp runs it (runtime.CUDA_PROVIDERS,
TF32 off) and on CUDA with onnxruntime's default TF32; prints the relative L2 distance of each CUDA result
to the CPU's and the median time of 10 calls. Exit code 1 if the TF32-off result is further than 1e-4.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onnxlrp import bench  # noqa: E402
from onnxlrp.runtime import CUDA_PROVIDERS, Explainer  # noqa: E402
from gpu_check import require  # noqa: E402  (tools/ is on the path when a tool runs)

SETUPS = {"cpu": ["CPUExecutionProvider"], "cuda": CUDA_PROVIDERS,
          "cuda-tf32": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def relative_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--composites", default="epsilon_plus_flat,epsilon_gamma_box")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    require("CUDAExecutionProvider")
    worst = 0.0
    for model in args.models:
        x = bench.input_batch(model, args.batch)
        for name in args.composites.split(","):
            relevance, ms = {}, {}
            for setup, providers in SETUPS.items():
                explainer = Explainer(model, composite=bench.composite_for(name), providers=providers)
                relevance[setup] = explainer.explain(x).relevance
                ms[setup] = statistics.median(bench.measure(lambda e=explainer: e.explain(x), 2, 10))
            cuda = relative_l2(relevance["cuda"], relevance["cpu"])
            tf32 = relative_l2(relevance["cuda-tf32"], relevance["cpu"])
            worst = max(worst, cuda)
            print(f"{model} {name} batch {args.batch}: relative L2 to the CPU: CUDA {cuda:.1e}, CUDA with TF32 "
                  f"{tf32:.1e}; median ms: CPU {ms['cpu']:.1f}, CUDA {ms['cuda']:.2f}, CUDA with TF32 "
                  f"{ms['cuda-tf32']:.2f}", flush=True)
    return 1 if worst > 1e-4 else 0


if __name__ == "__main__":
    sys.exit(main())
