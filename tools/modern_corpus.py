"""The modern-architecture corpus (tests/modern) as a markdown table: for every (model, export, composite),
whether the checks of tests/modern/test_modern_corpus.py pass (or the first line of what failed) and the
conservation, sum of input relevance / explained score, per sample. On the piecewise-linear models an
extra row compares unstabilised LRP-0 with float64 gradient x input. The table of docs/corpus.md.

    python tools/modern_corpus.py                          # every case; exports in a fresh temporary folder
    python tools/modern_corpus.py --cache /tmp/modern_cache --out /tmp/modern_corpus.md
    python tools/modern_corpus.py --models resnet_d,repvgg --exports torchscript

Needs torch, onnxscript (dynamo exports), timm and ultralytics (.ci/run installs them; see docs/corpus.md).
--cache reuses the ONNX files found there (delete them after changing the builders).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "modern"))

import modern_models as M  # noqa: E402

LRP0 = "lrp0 (unstabilised) = gradient x input"


def one_line(exc: BaseException, width: int = 240) -> str:
    """`Type: message` on one line, safe in a markdown cell; a longer one keeps its start (what failed
    where) and its end (onnxruntime's shapes), with " ... " between."""
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if len(line) > width:
        line = line[:width * 3 // 5] + " ... " + line[-(width * 2 // 5 - 5):]
    return line.replace("|", "\\|")


def conservation_text(values: np.ndarray) -> str:
    return ", ".join(f"{v:.3g}" for v in np.asarray(values).ravel())


def run_case(model, path: Path, name: str, way: str, composite: str) -> tuple[str, str]:
    """(result, conservation) of one case: 'pass' or the one-line error."""
    try:
        if composite == LRP0:
            case = M.explain(path, name, way, M.lrp0_unstabilised())
            M.check_outputs_and_relevance(case)
            error = M.relative_l2(case.relevance, M.gradient_times_input(model, case.x, case.target))
            verdict = "pass" if error <= M.GRADIENT_TOLERANCE else "FAIL"
            return f"{verdict} (relative L2 {error:.2g})", conservation_text(case.conservation)
        case = M.explain(path, name, way, composite)
        M.check_outputs_and_relevance(case)
        return "pass", conservation_text(case.conservation)
    except Exception as exc:   # noqa: BLE001 - every failure is a row of the table
        return "FAIL: " + one_line(exc), ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(M.MODELS), help="comma-separated, of: " + ", ".join(M.MODELS))
    parser.add_argument("--exports", default=",".join(M.EXPORTS), help="comma-separated, of: " + ", ".join(M.EXPORTS))
    parser.add_argument("--composites", default=",".join(M.COMPOSITES))
    parser.add_argument("--cache", type=Path, help="folder for the ONNX files (reused when present)")
    parser.add_argument("--out", type=Path, help="write the table there as well")
    args = parser.parse_args(argv)
    if args.cache is None:
        with tempfile.TemporaryDirectory(prefix="modern_corpus_") as folder:
            return tabulate(args, Path(folder))
    args.cache.mkdir(parents=True, exist_ok=True)
    return tabulate(args, args.cache)


def tabulate(args, cache: Path) -> int:
    names, ways = args.models.split(","), args.exports.split(",")
    rows = ["| model | export | composite | result | conservation |", "|---|---|---|---|---|"]
    failed_exports, started = [], time.time()
    for name in names:
        reason = M.unavailable(name)
        if reason:
            rows.append(f"| {name} | all | all | skipped: {reason} | |")
            continue
        model = M.build(name)
        for way in ways:
            path = cache / f"{name}.{way}.onnx"
            if not path.exists():
                try:
                    M.export(model, name, way, path)
                except Exception as exc:   # noqa: BLE001
                    failed_exports.append(f"{name} {way}: {one_line(exc)}")
                    rows.append(f"| {name} | {way} | all | export failed: {one_line(exc)} | |")
                    continue
            cases = args.composites.split(",") + ([LRP0] if M.MODELS[name].piecewise_linear else [])
            for composite in cases:
                result, conservation = run_case(model, path, name, way, composite)
                rows.append(f"| {name} | {way} | {composite} | {result} | {conservation} |")
                print(rows[-1], file=sys.stderr, flush=True)
    passed = sum(row.split(" | ")[3].startswith("pass") for row in rows[2:])
    table = "\n".join(rows) + f"\n\n{passed} of {len(rows) - 2} cases pass ({time.time() - started:.0f} s).\n"
    if failed_exports:
        table += "\nExports that failed:\n" + "".join(f"- {line}\n" for line in failed_exports)
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
