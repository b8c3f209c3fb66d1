"""Does the CUDA execution provider run the whole explainer graph? (Needs onnxruntime-gpu and a GPU.)

    python tools/gpu_check.py MODEL [MODEL...] [--composite epsilon_plus_flat] [--provider CUDAExecutionProvider]

For each model: compiles the explainer, runs it once with onnxruntime's profiler on, and lists every
node that ran on another provider than the one asked for (a CPU fallback), by op type. Exit code 1 if
any did. With --provider CPUExecutionProvider it runs anywhere (a check of the check).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onnxlrp import bench  # noqa: E402
from onnxlrp.runtime import Explainer, default_session_options, new_session, sample_feeds  # noqa: E402


def require(provider: str) -> None:
    """Exit with what to install where this onnxruntime build lacks `provider`."""
    if provider not in ort.get_available_providers():
        raise SystemExit(f"{provider} is not available in this onnxruntime build "
                         f"({', '.join(ort.get_available_providers())}); pip install onnxruntime-gpu")


def placements(model: str, composite: str, provider: str, batch: int = 2) -> collections.Counter:
    """(provider, op type) -> number of kernel runs, from one profiled run of the explainer."""
    require(provider)
    compiled = Explainer(model, composite=bench.composite_for(composite)).compiled("logit")
    options = default_session_options(os.cpu_count() or 1)
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = str(Path(folder) / "profile")
        providers = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
        session = new_session(compiled.model.SerializeToString(), options, providers)
        session.run(None, sample_feeds(session, batch))
        events = json.loads(Path(session.end_profiling()).read_text())
    counts = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            counts[(event["args"].get("provider", "?"), event["args"]["op_name"])] += 1
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--composite", default="epsilon_plus_flat")
    parser.add_argument("--provider", default="CUDAExecutionProvider")
    args = parser.parse_args(argv)
    fallbacks = 0
    for model in args.models:
        counts = placements(model, args.composite, args.provider)
        elsewhere = {key: n for key, n in counts.items() if key[0] != args.provider}
        total = sum(counts.values())
        print(f"{model}: {total} kernels, {total - sum(elsewhere.values())} on {args.provider}")
        for (provider, op), n in sorted(elsewhere.items()):
            print(f"  fallback: {op} x{n} on {provider}")
        fallbacks += len(elsewhere)
    return 1 if fallbacks else 0


if __name__ == "__main__":
    sys.exit(main())
