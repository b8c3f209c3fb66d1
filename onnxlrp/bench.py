"""Timing an explanation against plain inference, in one process and one run (`onnxlrp bench MODEL`).

Every timing uses the same thread count, warm-up and repeats and reports the median; the cases are timed
in turns over a few rounds, so that a drift of the machine's speed hits them alike. Plain inference is
an onnxruntime session of the original model with full graph optimisation; an explanation is one run of
the compiled explainer's session, fed as `Explainer.explain` feeds it (the predicted class, logit mode). Peak memory is measured in a fresh child
process per case (the high-water mark of its resident set above what it held before), since in one
process the high-water mark only ever grows: for inference and for an explanation, a session of the
model (the original, or the compiled explainer read from a file, as a server would load it) built and
run three times (a first call's peak can understate what a session holds from then on); separately, the
compilation.
"""
from __future__ import annotations

import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from . import composites as composites_module
from .runtime import default_session_options, new_session, provider_name, sample_feeds


@dataclass
class Timing:
    what: str                   # "inference", a composite's name, "zennit <composite>"
    batch: int
    median_ms: float
    times_ms: list = field(default_factory=list)
    compile_s: float | None = None
    peak_mb: float | None = None          # one session built and run STEADY_CALLS times, in a fresh process
    compile_peak_mb: float | None = None  # compiling the explainer, in a fresh process


def measure(run, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of each of `repeats` calls of run(), after `warmup` calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def input_batch(model_path: str, batch: int, seed: int = 0) -> np.ndarray:
    """A random batch for the model's first input (one session is built to read its shape)."""
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    return next(iter(sample_feeds(session, batch, seed).values()))


@dataclass
class Case:
    """Something to time: `run()` does one call."""
    what: str
    run: object
    compile_s: float | None = None


def inference_case(model_path: str, x: np.ndarray, threads: int, providers=None) -> Case:
    session = new_session(model_path, default_session_options(threads), providers or ["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: x}
    return Case("inference", lambda: session.run(None, feeds))


def explain_case(model_path: str, composite_name: str, x: np.ndarray, threads: int, providers=None) -> Case:
    """One explanation per call: the compiled explainer's session, fed as Explainer.explain feeds it. Only
    the session is kept (not the model protos), so that several cases of a large model fit in memory."""
    from .compiler import compile_explainer

    start = time.perf_counter()
    compiled = compile_explainer(model_path, composite=composite_for(composite_name))
    session = new_session(compiled.model, default_session_options(threads),
                          providers or ["CPUExecutionProvider"])
    feeds = {compiled.inputs[0]: x, compiled.target_input: np.full(len(x), -1, np.int64)}
    compile_s = time.perf_counter() - start
    del compiled
    return Case(composite_name, lambda: session.run(None, feeds), compile_s=compile_s)


def time_cases(cases: list[Case], batch: int, warmup: int, repeats: int, rounds: int) -> list[Timing]:
    """Each case `repeats` times in all, spread over `rounds` rounds that visit every case in turn (with
    `warmup` untimed calls at each visit), so that a drift of the machine's speed hits all cases alike;
    every other round visits them in reverse, so that no case always follows the same one (a case timed
    right after another measured slower on this machine than the same case timed first)."""
    times = {case.what: [] for case in cases}
    per_round = max(1, -(-repeats // rounds))
    for round_ in range(rounds):
        for case in (cases if round_ % 2 == 0 else cases[::-1]):
            times[case.what] += measure(case.run, warmup, per_round)
    return [Timing(case.what, batch, statistics.median(times[case.what]), times[case.what], compile_s=case.compile_s)
            for case in cases]


STEADY_CALLS = 3   # session calls per peak-memory measurement


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; ru_maxrss would carry the parent's peak over exec)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024.0
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _peak_child(kind: str, model_path: str, batch: int, threads: int, composite, queue, feeds=None) -> None:
    baseline = _peak_rss_mb()
    if kind == "compile":
        from .compiler import compile_explainer
        compile_explainer(model_path, composite=composite_for(composite))
    else:   # one session of the model at model_path (the original, or a compiled explainer), run as a
        # server runs it: again and again (onnxruntime's arena and planners settle by the second call)
        session = ort.InferenceSession(model_path, default_session_options(threads), providers=["CPUExecutionProvider"])
        feeds = feeds if feeds is not None else sample_feeds(session, batch)
        for _ in range(STEADY_CALLS):
            session.run(None, feeds)
    queue.put(_peak_rss_mb() - baseline)


def peak_memory_mb(kind: str, model_path: str, batch: int = 1, threads: int = 1, composite=None,
                   feeds: dict | None = None) -> float:
    """Peak resident memory (MB) added, in a fresh process, by kind "session" (building a session of the
    model at model_path and running it STEADY_CALLS times, on `feeds` or noise) or "compile" (compiling
    its explainer with `composite`)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_peak_child, args=(kind, model_path, batch, threads, composite, queue, feeds))
    child.start()
    value = queue.get(timeout=1800)
    child.join()
    return value


def _explainer_peaks(model_path: str, names: list[str], batches: list[int], threads: int) -> dict:
    """(composite, batch) -> peak MB of a session of the compiled explainer; (composite, "compile") -> peak
    MB of compiling it. The explainer is compiled here once and read back by each child from a file."""
    from .compiler import compile_explainer
    from .model import save_model

    peaks = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            path = save_model(compile_explainer(model_path, composite=composite_for(name)).model,
                              Path(folder) / f"{name}.onnx")
            for batch in batches:
                peaks[name, batch] = peak_memory_mb("session", str(path), batch, threads)
            peaks[name, "compile"] = peak_memory_mb("compile", model_path, composite=name)
            path.unlink()
    return peaks


def machine(providers=None) -> str:
    """The CPU, its logical CPUs and onnxruntime's version; the GPU's name when a CUDA provider is asked for."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    described = f"{cpu}, {os.cpu_count()} logical CPUs, onnxruntime {ort.__version__}"
    if providers and any("CUDA" in provider_name(p) for p in providers):
        described += f", GPU {_gpu_name()}"
    return described


def _gpu_name() -> str:
    try:
        found = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
        return found.stdout.strip().splitlines()[0] if found.returncode == 0 and found.stdout.strip() else "?"
    except (OSError, subprocess.SubprocessError):
        return "? (nvidia-smi not found)"


def benchmark(model_path: str, composite_names: list[str], batches: list[int], threads: int, warmup: int = 2,
              repeats: int = 10, memory: bool = True, providers=None, extra=None, rounds: int = 3) -> list[Timing]:
    """Inference and each composite (and the cases `extra(x, batch)` returns, e.g. Zennit's) at each batch
    size, timed in turns (time_cases)."""
    rows = []
    largest = input_batch(model_path, max(batches))    # one session to read the input shape, not one per batch
    for batch in batches:
        x = largest[:batch]
        cases = [inference_case(model_path, x, threads, providers)]
        cases += [explain_case(model_path, name, x, threads, providers) for name in composite_names]
        cases += extra(x, batch) if extra is not None else []
        rows += time_cases(cases, batch, warmup, repeats, rounds)
        del cases      # the sessions of this batch size go before the next are built
    if memory:
        peaks = _explainer_peaks(model_path, composite_names, batches, threads)
        for row in rows:
            if row.what == "inference":
                row.peak_mb = peak_memory_mb("session", model_path, row.batch, threads)
            elif (row.what, row.batch) in peaks:
                row.peak_mb, row.compile_peak_mb = peaks[row.what, row.batch], peaks[row.what, "compile"]
    return rows


def table(rows: list[Timing], model_mb: float | None = None) -> str:
    """Markdown: per batch, each row's median, its ratio to inference, Zennit / onnxlrp where both ran."""
    lines = ["| batch | what | median ms | × inference | zennit / onnxlrp | compile s | peak MB | compile peak MB |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for batch in sorted({r.batch for r in rows}):
        same = [r for r in rows if r.batch == batch]
        base = next((r.median_ms for r in same if r.what == "inference"), None)
        ours = {r.what: r.median_ms for r in same if r.what != "inference" and not r.what.startswith("zennit")}
        for r in same:
            ratio = f"{r.median_ms / base:.2f}" if base and r.what != "inference" else ""
            versus = ""
            if r.what.startswith("zennit"):
                name = r.what.split(" ", 1)[1]
                versus = f"{r.median_ms / ours[name]:.2f}" if name in ours else ""
            lines.append(f"| {batch} | {r.what} | {r.median_ms:.1f} | {ratio} | {versus} | "
                         f"{'' if r.compile_s is None else f'{r.compile_s:.2f}'} | "
                         f"{'' if r.peak_mb is None else f'{r.peak_mb:.0f}'} | "
                         f"{'' if r.compile_peak_mb is None else f'{r.compile_peak_mb:.0f}'} |")
    if model_mb is not None:
        lines.append(f"\nmodel size {model_mb:.0f} MB" if model_mb >= 1 else f"\nmodel size {model_mb * 1000:.0f} kB")
    return "\n".join(lines)


# Composites that need input bounds are timed with those of standardised images.
BOUNDS = dict(low=-3.0, high=3.0)


def composite_for(name: str):
    key = name.strip().lower().replace("-", "_")
    return composites_module.get(key, **BOUNDS) if key == "epsilon_gamma_box" else composites_module.get(key)
