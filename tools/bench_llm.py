"""Benchmark: a decoder LLM as onnxruntime serves it (onnxruntime-genai's builder, fp32 and int4), explained with
AttnLRP, against plain inference and against LXT 2.1 on the same HF model, in one run.

    python tools/bench_llm.py                                  # Qwen2.5-0.5B's shape, 256 tokens, 2 threads
    python tools/bench_llm.py --arch llama --tokens 10 --answer 4   # the tiny test model: a quick check

For each export (tools/llm_fixtures.py builds them; the Qwen2.5-0.5B-shaped one is 24 layers, hidden 896, 14
heads, 2 key/value heads, vocabulary 8192, random weights): the file sizes of the model and of its explainer,
then in a fresh process each (so that peak resident memory, VmHWM, is that run's): inference of a prompt of
--tokens tokens (one session run, no past), the explanation of the next token at the last position (one
explainer run), and LXT's (float32, its efficient mode, frozen weights: forward and backward). Times are
medians over --repeats runs after one warm-up, with --threads intra-op threads (torch.set_num_threads for
LXT). Then, in this process, generating an answer of --answer tokens against generating and explaining it
(Explainer.explain_generation). Needs torch, transformers 4.52.4 and lxt for the LXT column, and the
builder's environment (tools/llm_fixtures.py) to build the exports.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import llm_fixtures as F  # noqa: E402

CHILD = r"""
import json, statistics, sys, time
import numpy as np
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
kind, path, feeds_path, threads, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
feeds = dict(np.load(feeds_path))
loaded_mb = None
if kind in ("lxt", "lxt_checkpointing"):
    sys.path.insert(0, sys.argv[6])
    import torch, transformers
    torch.set_num_threads(threads)
    import llm_lxt_oracle
    model_type = json.load(open(path + "/config.json"))["model_type"]
    llm_lxt_oracle.patch(model_type, "attn_lrp")
    model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager",
                                                              torch_dtype=torch.float32).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if kind == "lxt_checkpointing":   # recompute each layer in the backward pass (HF runs it in training mode only)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    ids = torch.as_tensor(feeds["input_ids"])
    def call():
        embeddings = model.get_input_embeddings()(ids).detach().requires_grad_()
        logits = model(inputs_embeds=embeddings, use_cache=False).logits
        last = logits[0, -1]
        last[last.argmax()].backward()
        return (embeddings * embeddings.grad).sum(-1)
else:
    import onnxruntime as ort
    options = ort.SessionOptions()
    if kind.startswith("explainer"):   # the session options onnxlrp's Explainer runs explainers with
        sys.path.insert(0, sys.argv[6].rsplit("/", 1)[0])
        from onnxlrp.runtime import default_session_options
        options = default_session_options(threads)
        if kind == "explainer_dequantized_at_load":   # constant weights' DequantizeLinear folded at load
            options.add_session_config_entry("session.disable_quant_qdq", "1")
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in wanted}
    call = lambda: session.run(None, feeds)
loaded_mb = peak_mb()
if repeats > 0:   # 0: one run without a warm-up (long prompts)
    call()
budget = float(sys.argv[7])   # seconds of timed runs: no further run starts past it
times = []
for _ in range(max(repeats, 1)):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
    if sum(times) >= budget:
        break
print(json.dumps({"ms": 1000 * statistics.median(times), "runs": len(times), "peak_mb": peak_mb(),
                  "loaded_mb": loaded_mb}))
"""


def child(kind: str, path: Path, feeds: dict, threads: int, repeats: int, work: Path,
          memory_limit_gb: float | None = None, budget_s: float = float("inf")) -> dict:
    """One measurement in a fresh process: the median of `repeats` timed runs after a warm-up, fewer where the
    runs so far took budget_s; with memory_limit_gb its address space is capped there, so that running out of
    memory is an error of its own ("out of memory") rather than the system's OOM killer."""
    feeds_path = work / "feeds.npz"
    np.savez(feeds_path, **feeds)

    def cap():
        import resource
        limit = int(memory_limit_gb * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    done = subprocess.run([sys.executable, "-c", CHILD, kind, str(path), str(feeds_path), str(threads), str(repeats),
                           str(ROOT / "tools"), str(budget_s)], capture_output=True, text=True, check=False,
                          preexec_fn=cap if memory_limit_gb else None)
    if done.returncode:
        said = done.stderr.strip()
        if done.returncode == -9 or any(w in said for w in ("bad_alloc", "MemoryError", "Failed to allocate",
                                                             "DefaultCPUAllocator: can't allocate")):
            return {"error": "out of memory"}
        return {"error": said.splitlines()[-1] if said else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def size_mb(path: Path) -> float:
    return F.size_of(path) / 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="qwen2_05b", choices=F.ARCHS + F.BENCH_ARCHS)
    parser.add_argument("--exports", nargs="+", default=["genai_fp32", "genai_int4"])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--answer", type=int, default=32, help="new tokens generated and explained")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dequantize-at-load", action="store_true",
                        help="quantized exports: also the explainer with onnxlrp's session options, with and "
                        "without onnxruntime folding the weights' DequantizeLinear at load")
    args = parser.parse_args(argv)
    from onnxlrp import Explainer, bench
    from onnxlrp.compiler import compile_explainer
    from onnxlrp.model import save_model

    config = json.loads((F.fixture(args.arch) / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    rng = np.random.default_rng(0)
    ids = np.concatenate([[2], rng.integers(4, len(F.WORDS), size=args.tokens - 1)])[None].astype(np.int64)
    print(f"machine: {bench.machine()}; {args.threads} threads; {args.arch} ({config['num_hidden_layers']} layers, "
          f"hidden {config['hidden_size']}, {config['num_attention_heads']} heads, {config['num_key_value_heads']} "
          f"key/value heads, vocabulary {config['vocab_size']}); prompt {args.tokens} tokens, batch 1; median of "
          f"{args.repeats} after a warm-up; peak = VmHWM of a fresh process\n")
    print("| export | model MB | explainer MB | compile s | inference ms | explain ms | explain / inference | "
          "inference peak MB | explain peak MB | LXT ms | LXT / onnxlrp | LXT peak MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    answers = []
    with tempfile.TemporaryDirectory(prefix="onnxlrp-bench-llm-") as scratch:
        work = Path(scratch)
        lxt = child("lxt", F.fixture(args.arch), {"input_ids": ids}, args.threads, args.repeats, work)
        for way in args.exports:
            path = F.fixture(args.arch, way)
            feeds = F.ort_feeds(path, ids, head_dim=head_dim)
            start = time.perf_counter()
            compiled = compile_explainer(str(path), composite="attn_lrp")
            compile_s = time.perf_counter() - start
            explainer_path = save_model(compiled.model, work / f"{way}.explainer.onnx")
            explain_feeds = {**feeds, compiled.target_input: np.full(1, -1, np.int64)}
            if compiled.position_input:
                explain_feeds[compiled.position_input] = np.full(1, args.tokens - 1, np.int64)
            del compiled
            inference = child("ort", path, feeds, args.threads, args.repeats, work)
            explained = child("ort", explainer_path, explain_feeds, args.threads, args.repeats, work)
            if args.dequantize_at_load and "int" in way:
                for kind in ("explainer", "explainer_dequantized_at_load"):
                    run = child(kind, explainer_path, explain_feeds, args.threads, args.repeats, work)
                    print(f"  ({way}, {kind}: {run.get('ms', 0):.0f} ms, explain / inference "
                          f"{run.get('ms', float('nan')) / inference.get('ms', float('nan')):.2f}, peak "
                          f"{run.get('peak_mb', 0):.0f} MB{', ' + run['error'] if 'error' in run else ''})")
            explainer_mb = sum(p.stat().st_size for p in work.glob(f"{way}.explainer.onnx*")) / 1e6
            ratio = explained.get("ms", float("nan")) / inference.get("ms", float("nan"))
            lxt_ratio = lxt.get("ms", float("nan")) / explained.get("ms", float("nan"))
            print(f"| {way} | {size_mb(path):.0f} | {explainer_mb:.0f} | {compile_s:.1f} | {inference.get('ms', 0):.0f} "
                  f"| {explained.get('ms', 0):.0f} | {ratio:.2f} | {inference.get('peak_mb', 0):.0f} | "
                  f"{explained.get('peak_mb', 0):.0f} | {lxt.get('ms', 0):.0f} | {lxt_ratio:.2f} | "
                  f"{lxt.get('peak_mb', 0):.0f} |", flush=True)
            for failed in (inference, explained, lxt):
                if "error" in failed:
                    print(f"  ({way}: {failed['error']})")
            explainer = Explainer(str(path), composite="attn_lrp")
            prompt = ids[0, :16]
            explainer.explain_generation(prompt, max_new_tokens=2, eos_token_id=[])   # compiled, sessions built
            start = time.perf_counter()
            new = explainer.generate(prompt, max_new_tokens=args.answer, eos_token_id=[])
            generate_s = time.perf_counter() - start
            start = time.perf_counter()
            generation = explainer.explain_generation(prompt, max_new_tokens=args.answer, eos_token_id=[])
            explain_s = time.perf_counter() - start
            answers.append((way, len(new), generate_s, explain_s, generation.relevance.shape))
    print(f"\nA {args.answer}-token answer to a {min(16, args.tokens)}-token prompt (greedy, with the cache; the "
          "explainer compiled and its sessions built before), in this process:\n")
    print("| export | new tokens | generate s | generate + explain s | × generate | relevance matrix |")
    print("|---|---:|---:|---:|---:|---|")
    for way, count, generate_s, explain_s, shape in answers:
        print(f"| {way} | {count} | {generate_s:.2f} | {explain_s:.2f} | {explain_s / generate_s:.1f} | "
              f"{shape[0]} x {shape[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
