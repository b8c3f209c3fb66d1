"""Hostile model files through the command line, each in a subprocess with a timeout: every case ends in
exit 0 with the model's outputs reproduced, or exit 2 with a short message; never a traceback, a crash
or a hang; the input file is left as it was and nothing is written outside the output folder.

A fast slice runs by default; `pytest -m fuzz` runs every mutation class on both bases, several seeds,
through every command."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import hostile

TIMEOUT = 120
COMMANDS = {
    "compile": lambda model, inp, out: ["compile", model, "-o", str(out / "m.lrp.onnx")],
    "explain": lambda model, inp, out: ["explain", model, inp, "--out", str(out), "--quiet"],
    "inspect": lambda model, inp, out: ["inspect", model],
    "export": lambda model, inp, out: ["export", model, "--format", "triton", "--out", str(out / "repo")],
    "evaluate": lambda model, inp, out: ["evaluate", "conservation", model, inp, "--out", str(out)],
    "bench": lambda model, inp, out: ["bench", model, "--batches", "1", "--repeats", "1", "--no-memory"],
}
FAST = ["truncated", "random_bytes", "empty", "dangling_input", "cycle", "duplicate_output", "missing_initializer",
        "unknown_op", "contradicting_attribute", "zero_dim", "absurd_dim", "no_outputs", "opset_out_of_range",
        "ir_out_of_range", "control_flow", "nan_weights", "external_outside", "external_symlink_proc",
        "wrong_weight_shape", "unchanged"]


def _snapshot(folder: Path, skip: Path) -> dict[str, str]:
    found = {}
    for path in sorted(folder.rglob("*")):
        if skip in path.parents or path == skip or path.is_dir():
            continue
        found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if not path.is_symlink() else "link"
    return found


def _reproduces(original: Path, explainer: Path) -> bool:
    """The explainer's first output equals the original model's on a random batch."""
    try:
        reference = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"])
    except Exception:   # noqa: BLE001 - the original cannot run: an explainer of it must not have been made
        return False
    compiled = ort.InferenceSession(str(explainer), providers=["CPUExecutionProvider"])
    value = reference.get_inputs()[0]
    batch = value.shape[0] if isinstance(value.shape[0], int) else 2
    shape = [batch] + [d if isinstance(d, int) else 1 for d in value.shape[1:]]
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    feeds = {value.name: x}
    extra = {i.name: np.full(batch, -1, np.int64) for i in compiled.get_inputs() if i.name != value.name}
    return np.allclose(reference.run(None, feeds)[0], compiled.run(None, {**feeds, **extra})[0], rtol=1e-4, atol=1e-5)


OUTCOMES: dict[str, int] = {}   # how the cases ended: exit 0, refused (exit 2), reported (inspect's exit 1)


def run_case(base: str, mutation: str, seed: int, command: str, tmp: Path) -> str | None:
    """None if the case ended well, else what went wrong."""
    case = tmp / f"{base}-{mutation}-{seed}"
    model = hostile.make(base, mutation, seed, case)
    out = case / "out"
    before = _snapshot(tmp, out)
    args = COMMANDS[command](str(model), str(hostile.INPUTS[base]), out)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("ONNXLRP_DEBUG", None)
    try:
        done = subprocess.run([sys.executable, "-m", "onnxlrp.cli", *args], capture_output=True, text=True,
                              timeout=TIMEOUT, env=env, cwd=case)
    except subprocess.TimeoutExpired:
        return f"hung for more than {TIMEOUT} s"
    after = _snapshot(tmp, out)
    if after != before:
        changed = sorted(set(after.items()) ^ set(before.items()))
        return f"files outside the output folder changed: {changed[:3]}"
    stderr = done.stderr.strip()
    if "Traceback" in stderr or "internal error" in stderr:
        return f"exit {done.returncode} with {stderr[-600:]}"
    if done.returncode == 2:
        lines = [line for line in stderr.splitlines() if line.startswith("error:")]
        if not lines or len(stderr) > 2000:
            return f"exit 2 without one short error line: {stderr[-600:]}"
        OUTCOMES["refused"] = OUTCOMES.get("refused", 0) + 1
        return None
    if command == "inspect" and done.returncode == 1 and "problem(s):" in done.stdout:
        OUTCOMES["reported by inspect"] = OUTCOMES.get("reported by inspect", 0) + 1   # its documented exit 1
        return None
    if done.returncode != 0:
        return f"exit {done.returncode}: {stderr[-600:]}"
    if command == "compile" and not _reproduces(model, out / "m.lrp.onnx"):
        return "compiled an explainer whose outputs differ from the model's (or of a model onnxruntime refuses)"
    OUTCOMES["exit 0"] = OUTCOMES.get("exit 0", 0) + 1
    return None


@pytest.mark.parametrize("mutation", FAST)
def test_fast_slice(mutation, tmp_path):
    base = "mlp" if mutation in ("contradicting_attribute",) else "vgg"
    problem = run_case(base, mutation, 0, "compile", tmp_path)
    assert problem is None, problem


@pytest.mark.fuzz
@pytest.mark.slow
def test_every_mutation_through_every_command(tmp_path):
    problems, counts = [], {"cases": 0}
    for base in hostile.BASES:
        for mutation in hostile.MUTATIONS:
            for seed in range(3 if mutation in ("truncated", "flipped", "zeroed", "random_bytes") else 1):
                for command in COMMANDS:
                    counts["cases"] += 1
                    problem = run_case(base, mutation, seed, command, tmp_path / command)
                    if problem:
                        problems.append(f"{base} {mutation} {seed} {command}: {problem}")
    report = Path(os.environ.get("ONNXLRP_FUZZ_REPORT", tmp_path / "fuzz_report.txt"))
    report.write_text("\n".join(problems))
    print(f"\nfuzz: {counts['cases']} cases, {len(problems)} problems (listed in {report}); {OUTCOMES}")
    assert not problems, "\n".join(problems[:20])
