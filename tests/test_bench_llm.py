"""tools/bench_llm.py's measuring child (also tools/bench_long.py's): a fresh process, the median of the timed
runs after a warm-up, and no further run once the runs so far took the budget."""
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import bench_llm  # noqa: E402


def test_runs_stop_at_the_budget(models_dir, tmp_path):
    path = models_dir / "tiny_vgg.onnx"
    name = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0]
    feeds = {name.name: np.zeros([1 if not isinstance(d, int) else d for d in name.shape], np.float32)}
    every = bench_llm.child("ort", path, feeds, 1, 4, tmp_path)
    assert every["runs"] == 4 and every["ms"] > 0 and every["peak_mb"] >= every["loaded_mb"] > 0
    assert bench_llm.child("ort", path, feeds, 1, 4, tmp_path, budget_s=0.0)["runs"] == 1
