"""Benchmark: AttnLRP / CP-LRP explanations against plain onnxruntime inference and against LXT 2.1, on
BERT-base (12 layers, hidden 768, 12 heads, seq 128) and ViT-B/16 at 224, random weights, in one process.

    python tools/bench_transformers.py                       # both models, batch 1 and 8, 2 threads
    python tools/bench_transformers.py --models bert --batches 1 --repeats 3

Needs torch and transformers (the models are built and exported here, cached in --cache), and lxt
(pip install --no-deps lxt==2.1) for its column. Every timing: the same thread count (onnxruntime
intra-op threads = torch threads), warm-up, the median of the repeats, each case visited in turn over
rounds. LXT runs in float32 with its efficient (gradient x input) patches, after the ONNX files are
exported (its patches change transformers' classes for the whole process), with the weights frozen so
that torch computes the input's gradient alone (--lxt-weight-grads: the weights' gradients too). Peak memory: a fresh process
builds the session and runs it three times (VmHWM added).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "zennit_stub"))   # lxt imports torchvision's ViT module

from onnxlrp import bench  # noqa: E402
from onnxlrp.compiler import compile_explainer  # noqa: E402
from onnxlrp.model import save_model  # noqa: E402
from onnxlrp.runtime import default_session_options, new_session  # noqa: E402

SEQ = 128


def build(kind: str):
    import torch
    import transformers
    torch.manual_seed(0)
    if kind == "bert":
        config = transformers.BertConfig(num_labels=2)     # BERT-base: 12 x 768, 12 heads
        model = transformers.BertForSequenceClassification(config)
    else:
        config = transformers.ViTConfig(num_labels=1000)   # ViT-B/16 at 224
        model = transformers.ViTForImageClassification(config)
    config._attn_implementation = "eager"
    return model.eval(), config


def feeds_for(kind: str, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if kind == "bert":
        return {"input_ids": rng.integers(1000, 30000, size=(batch, SEQ)).astype(np.int64),
                "attention_mask": np.ones((batch, SEQ), np.int64)}
    return {"pixel_values": rng.normal(size=(batch, 3, 224, 224)).astype(np.float32)}


def export(kind: str, cache: Path) -> Path:
    import torch
    path = cache / f"{kind}_base.onnx"
    state = cache / f"{kind}_base.state.pt"
    if path.exists() and state.exists():
        return path
    model, _ = build(kind)
    names = list(feeds_for(kind, 1))
    axes = {n: {0: "batch", 1: "seq"} if kind == "bert" else {0: "batch"} for n in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(torch.as_tensor(v) for v in feeds_for(kind, 1).values()), str(path),
                          input_names=names, output_names=["logits"], dynamic_axes={**axes, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
    torch.save(model.state_dict(), state)
    return path


def lxt_case(kind: str, cache: Path, variant: str, batch: int, threads: int, weight_grads: bool = False):
    """One LXT explanation per call (forward and backward), or None if lxt does not import."""
    try:
        import torch
        from lxt.efficient import monkey_patch
        from lxt.efficient.patches import layer_norm_forward, non_linear_forward, patch_attention, patch_method
    except ImportError:
        return None
    torch.set_num_threads(threads)
    if kind == "bert":
        import transformers.models.bert.modeling_bert as module
        from lxt.efficient.models.bert import attnLRP
        monkey_patch(module, attnLRP)
    else:
        import transformers.models.vit.modeling_vit as module
        from transformers.activations import GELUActivation
        monkey_patch(module, {module: patch_attention,
                              torch.nn.LayerNorm: partial(patch_method, layer_norm_forward),
                              GELUActivation: partial(patch_method, non_linear_forward, keep_original=True)})
    model, _ = build(kind)
    model.load_state_dict(torch.load(cache / f"{kind}_base.state.pt", weights_only=True))
    if not weight_grads:   # LXT at its fastest: only the input's gradient is computed
        model.requires_grad_(False)
    feeds = {k: torch.as_tensor(v) for k, v in feeds_for(kind, batch).items()}

    def run():
        if kind == "bert":
            x = model.get_input_embeddings()(feeds["input_ids"]).detach().requires_grad_()
            logits = model(inputs_embeds=x, attention_mask=feeds["attention_mask"]).logits
        else:
            x = feeds["pixel_values"].clone().requires_grad_()
            logits = model(pixel_values=x).logits
        logits.max(dim=1).values.sum().backward()
        return (x * x.grad).detach()
    return bench.Case(f"LXT {variant}", run)


def peak_mb(path: str, kind: str, batch: int, threads: int, explainer: bool) -> float:
    feeds = feeds_for(kind, batch)
    if explainer:
        feeds["target"] = np.full(batch, -1, np.int64)
    return bench.peak_memory_mb("session", path, batch, threads, feeds=feeds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bert", "vit"], choices=["bert", "vit"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=["attn_lrp", "cp_lrp"])
    parser.add_argument("--cache", default=str(ROOT / ".bench_cache"))
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--lxt-weight-grads", action="store_true",
                        help="let torch compute the weights' gradients too, as a model left trainable does (by "
                        "default they are frozen: LXT at its fastest)")
    args = parser.parse_args(argv)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    print(bench.machine(), f"| {args.threads} threads")
    paths = {kind: export(kind, cache) for kind in args.models}   # before LXT patches transformers
    rows = []
    for kind in args.models:
        explainers = {}
        for variant in args.variants:
            start = time.perf_counter()
            compiled = compile_explainer(str(paths[kind]), composite=variant)
            compile_s = time.perf_counter() - start
            explainers[variant] = (save_model(compiled.model, cache / f"{kind}_base.{variant}.onnx"), compile_s)
            del compiled
        for batch in args.batches:
            feeds = feeds_for(kind, batch)
            forward = new_session(str(paths[kind]), default_session_options(args.threads), ["CPUExecutionProvider"])
            cases = [bench.Case("inference", partial(forward.run, None, feeds))]
            for variant, (path, compile_s) in explainers.items():
                session = new_session(str(path), default_session_options(args.threads), ["CPUExecutionProvider"])
                explain_feeds = {**feeds, "target": np.full(batch, -1, np.int64)}
                cases.append(bench.Case(f"onnxlrp {variant}", partial(session.run, None, explain_feeds),
                                        compile_s=compile_s))
                # LXT's patches are global and cannot be swapped for CP-LRP's in one process: AttnLRP only
                lxt = lxt_case(kind, cache, variant, batch, args.threads, args.lxt_weight_grads) \
                    if variant == "attn_lrp" else None
                if lxt is not None:
                    cases.append(lxt)
            timings = bench.time_cases(cases, batch, args.warmup, args.repeats, args.rounds)
            by_name = {t.what: t.median_ms for t in timings}
            for variant, (path, compile_s) in explainers.items():
                ours = by_name[f"onnxlrp {variant}"]
                theirs = by_name.get(f"LXT {variant}")
                memory = "" if args.no_memory else f"{peak_mb(str(path), kind, batch, args.threads, True):.0f}"
                inference_memory = "" if args.no_memory else \
                    f"{peak_mb(str(paths[kind]), kind, batch, args.threads, False):.0f}"
                rows.append((kind, variant, batch, by_name["inference"], ours, theirs, compile_s, memory,
                             inference_memory))
            print(f"{kind} batch {batch}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in by_name.items()), flush=True)
    print()
    print("| model | variant | batch | inference ms | onnxlrp ms | LXT ms | x inference | LXT / onnxlrp | compile s "
          "| explainer peak MB | inference peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for kind, variant, batch, inference, ours, theirs, compile_s, memory, inference_memory in rows:
        ratio = f"{theirs / ours:.2f}" if theirs else "n/a"
        lxt_ms = f"{theirs:.0f}" if theirs else "n/a"
        print(f"| {kind} | {variant} | {batch} | {inference:.0f} | {ours:.0f} | {lxt_ms} | {ours / inference:.2f} | "
              f"{ratio} | {compile_s:.1f} | {memory} | {inference_memory} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
