"""Benchmark: long prompts and large images, the explainer's default and bounded-memory forms (memory="low",
onnxlrp/compiler/recompute.py) against plain inference and LXT 2.1 with and without gradient checkpointing, in
one run.

    python tools/bench_long.py                                    # 12-layer 512-wide Llama, 512 .. 4096 tokens
    python tools/bench_long.py --arch qwen2_05b --lengths 512 1024 2048
    python tools/bench_long.py --vit --sizes 448 896              # ViT-B/16 at 448 and 896 px
    python tools/bench_long.py --vit large --sizes 224 448        # ViT-L/16

Decoders (tools/llm_fixtures.py builds them: llama_35m is 12 layers, hidden 512, 8 heads, 2 key/value heads,
35 M parameters; qwen2_05b is Qwen2.5-0.5B's shape; random weights), exported with torch.onnx (TorchScript,
dynamic sequence), batch 1, AttnLRP, the next token at the last position. Inference runs with onnxruntime's
default session options (as a server runs the model), the explainers with those onnxlrp's Explainer uses
(onnxlrp.runtime.default_session_options: no memory pattern). Each figure comes from a fresh process: peak resident memory (VmHWM) minus what the process held once its session or model was loaded
("above loaded"), and the time of a run (the median of --repeats runs after a warm-up, fewer where the runs so
far took --budget seconds: at long prompts one or two, where the machine's drift matters less). LXT runs the HF model in its
efficient mode (float32, frozen weights); "LXT ckpt" with HF's gradient checkpointing (each layer recomputed
in the backward pass). At the first length the two forms' relevances are compared in this process.
With --memory-limit GB each process is capped there, and a cell past it shows "OOM". Needs torch,
transformers 4.52.4 and lxt for the LXT columns.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import llm_fixtures as F  # noqa: E402
from bench_llm import child  # noqa: E402

FORMS = ("default", "low")


def _cell(result: dict) -> tuple[str, str]:
    if "error" in result:
        text = {"out of memory": "OOM", "skipped": "-"}.get(result["error"], "failed")
        return text, text
    return f"{result['ms'] / 1000:.2f}", f"{result['peak_mb'] - result['loaded_mb']:.0f}"


def _explainers(source: Path, work: Path, composite: str) -> tuple[dict[str, Path], str, str | None]:
    """Both forms' explainers saved, and their target and position inputs' names."""
    from onnxlrp.compiler import compile_explainer
    from onnxlrp.model import save_model
    paths = {}
    for form in FORMS:
        compiled = compile_explainer(str(source), composite=composite, memory=form)
        paths[form] = save_model(compiled.model, work / f"explainer_{form}.onnx")
        target, position = compiled.target_input, compiled.position_input
        del compiled
    return paths, target, position


def _same_relevance(paths: dict[str, Path], feeds: dict) -> str:
    """Relative L2 between the two forms' relevance of the first explained input, with onnxruntime's graph
    optimisations and without (its fusions apply to the low form's forward alone, whose intermediates no
    relevance node reads: that forward then computes the model's own inference bit for bit)."""
    import onnxruntime as ort
    said = []
    for level in ("ORT_ENABLE_ALL", "ORT_DISABLE_ALL"):
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        results = []
        for form in FORMS:
            session = ort.InferenceSession(str(paths[form]), options, providers=["CPUExecutionProvider"])
            name = next(o.name for o in session.get_outputs() if o.name.startswith("relevance_"))
            wanted = {i.name for i in session.get_inputs()}
            results.append(session.run([name], {k: v for k, v in feeds.items() if k in wanted})[0])
            del session
        default, low = (r.astype(np.float64) for r in results)
        said.append(f"{np.linalg.norm(low - default) / np.linalg.norm(default):.1e} "
                    f"{'with' if level == 'ORT_ENABLE_ALL' else 'without'} graph optimisations")
    return ", ".join(said)


def _ours(args, work: Path, source: Path, paths: dict[str, Path], feeds: dict, explain_feeds: dict) -> dict:
    """Inference and both explainer forms, each in a fresh process."""
    runs = {"inference": child("ort", source, feeds, args.threads, args.repeats, work, args.memory_limit,
                               args.budget)}
    for form in FORMS:
        runs[form] = child("explainer", paths[form], explain_feeds, args.threads, args.repeats, work,
                           args.memory_limit, args.budget)
    return runs


def _row(lead: list, runs: dict) -> str:
    """A table row: the lead cells, every run's time, every run's memory, low / default time."""
    cells = [_cell(result) for result in runs.values()]
    ratio = (runs["low"]["ms"] / runs["default"]["ms"]) if "ms" in runs["low"] and "ms" in runs["default"] else None
    return ("| " + " | ".join(str(v) for v in lead) + " | " + " | ".join(c[0] for c in cells) + " | "
            + " | ".join(c[1] for c in cells) + f" | {'' if ratio is None else f'{ratio:.2f}'} |")


def decoders(args) -> None:
    config = json.loads((F.fixture(args.arch) / "config.json").read_text())
    source = F.fixture(args.arch, "torchscript")
    print(f"{args.arch}: {config['num_hidden_layers']} layers, hidden {config['hidden_size']}, "
          f"{config['num_attention_heads']} heads, {config['num_key_value_heads']} key/value heads; torch.onnx "
          f"(TorchScript); AttnLRP; batch 1\n")
    print("| tokens | inference s | default s | low s | LXT s | LXT ckpt s | inference MB | default MB | low MB | "
          "LXT MB | LXT ckpt MB | low / default time |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="onnxlrp-bench-long-") as scratch:
        work = Path(scratch)
        paths, target, position = _explainers(source, work, "attn_lrp")
        for k, length in enumerate(args.lengths):
            rng = np.random.default_rng(0)
            ids = np.concatenate([[2], rng.integers(4, len(F.WORDS), size=length - 1)])[None].astype(np.int64)
            feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            explain_feeds = {**feeds, target: np.full(1, -1, np.int64), position: np.full(1, length - 1, np.int64)}
            if k == 0:
                same = (f"(relevance, low against default form at {length} tokens, relative L2: "
                        f"{_same_relevance(paths, explain_feeds)})")
            runs = _ours(args, work, source, paths, feeds, explain_feeds)
            for kind in ("lxt", "lxt_checkpointing"):
                runs[kind] = ({"error": "skipped"} if args.no_lxt else
                              child(kind, F.fixture(args.arch), {"input_ids": ids}, args.threads, args.repeats, work,
                                    args.memory_limit, args.budget))
            print(_row([length], runs), flush=True)
    print(f"\n{same}")   # after the table, which a line inside would cut in two (tools/bench_versions.py reads it)


VIT_SHAPES = {"base": ("ViT-B/16", dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                                         intermediate_size=3072)),
              "large": ("ViT-L/16", dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16,
                                         intermediate_size=4096))}


def vits(args) -> None:
    import torch
    import transformers
    name, shape = VIT_SHAPES[args.vit]
    print(f"{name} ({shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, "
          f"{shape['num_attention_heads']} heads), random weights, torch.onnx (TorchScript); AttnLRP; batch 1\n")
    print("| pixels | tokens | inference s | default s | low s | inference MB | default MB | low MB | "
          "low / default time |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="onnxlrp-bench-long-") as scratch:
        work = Path(scratch)
        for k, size in enumerate(args.sizes):
            torch.manual_seed(0)
            config = transformers.ViTConfig(image_size=size, num_labels=1000, **shape)
            config._attn_implementation = "eager"
            model = transformers.ViTForImageClassification(config).eval()
            source = work / f"vit_{size}.onnx"
            x = np.random.default_rng(0).normal(size=(1, 3, size, size)).astype(np.float32)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (torch.as_tensor(x),), str(source), input_names=["pixel_values"],
                                  output_names=["logits"], dynamic_axes={"pixel_values": {0: "batch"},
                                                                         "logits": {0: "batch"}},
                                  opset_version=17, dynamo=False)
            del model
            paths, target, _ = _explainers(source, work, "attn_lrp")
            feeds = {"pixel_values": x}
            explain_feeds = {**feeds, target: np.full(1, -1, np.int64)}
            if k == 0:
                same = (f"(relevance, low against default form at {size} px, relative L2: "
                        f"{_same_relevance(paths, explain_feeds)})")
            print(_row([size, (size // 16) ** 2 + 1], _ours(args, work, source, paths, feeds, explain_feeds)),
                  flush=True)
    print(f"\n{same}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="llama_35m", choices=F.ARCHS + F.BENCH_ARCHS)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--vit", nargs="?", const="base", choices=sorted(VIT_SHAPES),
                        help="a ViT/16 at --sizes instead of a decoder: base (ViT-B/16, the default) or large")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448, 896])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs after a warm-up, their median reported (0: one, no warm-up)")
    parser.add_argument("--budget", type=float, default=20.0, metavar="S",
                        help="no further timed run starts once the runs so far took S seconds")
    parser.add_argument("--no-lxt", action="store_true", help="leave out the LXT columns")
    parser.add_argument("--memory-limit", type=float, default=None, metavar="GB",
                        help="cap each measuring process's address space; past it the cell says OOM")
    args = parser.parse_args(argv)
    from onnxlrp import bench
    print(f"machine: {bench.machine()}; {args.threads} threads; time: median of up to {args.repeats} "
          f"run(s) after a warm-up, none started past {args.budget:g} s; MB: peak resident memory above the loaded session or model, each in a fresh process; "
          f"{time.strftime('%Y-%m-%d')}\n")
    (vits if args.vit else decoders)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
