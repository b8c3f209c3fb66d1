"""Tiny random decoder LLMs (Llama, Qwen2, Qwen3, Gemma3) as HuggingFace folders, and their ONNX exports the
way they are served: torch.onnx TorchScript, torch.onnx dynamo (static and dynamic shapes), optimum's
text-generation-with-past, and onnxruntime-genai's model builder (fp32, int4, int8).

    python tools/llm_fixtures.py [--out DIR] [--arch llama ...] [--exports torchscript ...] [--seed 0]

Three Python environments take part, because LXT 2.1 runs with transformers 4.52.4, optimum-onnx 0.1.0
needs transformers < 4.58 (and >= 4.53 for Gemma3) and the builder needs transformers 5.x: this file runs
in the one with transformers 4.52.4 (torch; the LXT side), and calls the builder with GENAI_PYTHON (env
ONNXLRP_GENAI_PYTHON, default /work/venvs/genai/bin/python) and optimum with OPTIMUM_PYTHON (env
ONNXLRP_OPTIMUM_PYTHON, default /work/venvs/optimum/bin/python) as subprocesses. The HF folder is written
by transformers 4.52.4 and read as it is by the others (check_folder_across_versions compares logits).

Weights are drawn larger than HuggingFace's 0.02 init, norm scales and biases random too, so that the
relevance of the next token spreads over many positions (DESIGN.md). Prints one JSON line per step with
its time and size; every output lands in OUT/<arch>-s<seed>/ (default: fixtures_dir()).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ARCHS = ("llama", "qwen2", "qwen3", "gemma3")
EXPORTS = ("torchscript", "dynamo_static", "dynamo_dynamic", "optimum", "genai_fp32", "genai_int4", "genai_int8",
           "genai_int4_asym")
# The builder's weight-only quantisation: defaults (symmetric, block 32, accuracy_level 4 on the CPU), and an
# asymmetric variant with zero points, block 16, float accumulation and the embedding table quantised too.
GENAI_OPTIONS = {"genai_int4_asym": ("int4", {"is_symmetric": "false", "block_size": 16, "accuracy_level": 1,
                                              "op_types_to_quantize": "MatMul/Gather"})}
VOCAB, SEQ = 128, 10
SPECIAL = ("<unk>", "<pad>", "<s>", "</s>")   # ids 0..3; the other ids are the words w4 .. w127
WORDS = [*SPECIAL, *(f"w{i}" for i in range(len(SPECIAL), VOCAB))]
GENAI_PYTHON = os.environ.get("ONNXLRP_GENAI_PYTHON", "/work/venvs/genai/bin/python")
OPTIMUM_PYTHON = os.environ.get("ONNXLRP_OPTIMUM_PYTHON", "/work/venvs/optimum/bin/python")
TOOLS = Path(__file__).resolve().parent


def fixtures_dir() -> Path:
    """Where fixtures are cached: $ONNXLRP_LLM_FIXTURES, else ~/.cache/onnxlrp/llm."""
    return Path(os.environ.get("ONNXLRP_LLM_FIXTURES", Path.home() / ".cache" / "onnxlrp" / "llm"))


def config_of(arch: str) -> dict:
    """The HF config: 2 layers, hidden 64, 4 query heads and 2 key/value heads of 16, vocabulary 128."""
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                  rms_norm_eps=1e-6, rope_theta=10000.0, initializer_range=0.2, attention_dropout=0.0,
                  pad_token_id=1, bos_token_id=2, eos_token_id=3, torch_dtype="float32", use_cache=True)
    if arch == "llama":
        return dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu",
                    tie_word_embeddings=False, attention_bias=False, mlp_bias=False, **common)
    if arch == "qwen2":   # biases on the q, k, v projections
        return dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_act="silu",
                    tie_word_embeddings=False, use_sliding_window=False, **common)
    if arch == "qwen3":   # RMSNorm on every head of q and k
        return dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"], hidden_act="silu",
                    tie_word_embeddings=False, attention_bias=False, use_sliding_window=False, **common)
    if arch == "gemma3":
        # Layer 0 slides over a window of 4 tokens (local rope base 10000), layer 1 is global (base 1e6).
        # transformers 4.52.4 reads sliding_window_pattern, 5.x layer_types: both are written. Softcaps off:
        # LXT takes the true gradient of tanh inside the attention scores, onnxlrp the identity rule.
        gemma = {**common, "rope_theta": 1_000_000.0}
        return dict(model_type="gemma3_text", architectures=["Gemma3ForCausalLM"],
                    hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True, query_pre_attn_scalar=16,
                    sliding_window=4, sliding_window_pattern=2, layer_types=["sliding_attention", "full_attention"],
                    rope_local_base_freq=10000.0, final_logit_softcapping=None, attn_logit_softcapping=None,
                    attention_bias=False, **gemma)
    raise ValueError(f"unknown arch {arch!r}; one of {ARCHS}")


EMBEDDING_STD = {"llama": 1.0, "qwen2": 1.0, "qwen3": 1.0, "gemma3": 0.05}


def make_model(arch: str, seed: int = 0):
    """The HF causal LM with random weights (float32, eager attention, eval mode).

    Linear weights N(0, 0.2^2), norm scales 1 + N(0, 0.2^2), biases N(0, 0.1^2), embeddings N(0, EMBEDDING_STD^2):
    with these the last position's own token takes about a quarter of |R| under AttnLRP (HF's 0.02 init puts
    over 80 % there). Gemma3 multiplies its embeddings by sqrt(hidden) = 8 and normalises every block's
    output before the residual add, so its embedding is drawn smaller or the residual stream is all token."""
    import torch
    import transformers
    torch.manual_seed(seed)
    config = transformers.AutoConfig.for_model(**config_of(arch))
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:   # Gemma's RMSNorm scales by 1 + weight, the others by weight
                param.copy_((0.0 if arch == "gemma3" else 1.0) + 0.2 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))
            elif "embed_tokens" in name:
                param.copy_(EMBEDDING_STD[arch] * torch.randn_like(param))
    return model


def write_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over WORDS (tokenizer.json, tokenizer_config.json, special_tokens_map.json)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(str(folder))


def make_hf_folder(arch: str, folder: Path, seed: int = 0) -> Path:
    """config.json, model.safetensors, generation_config.json and the tokenizer in `folder`."""
    model = make_model(arch, seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    config = json.loads((folder / "config.json").read_text())
    for key, value in config_of(arch).items():   # keys 4.52.4 drops on save (layer_types) go back in
        config.setdefault(key, value)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    write_tokenizer(folder)
    return folder


def load_model(folder: Path, dtype=None):
    import torch
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager",
                                                              torch_dtype=dtype or torch.float32)
    return model.eval()


def sample_ids(seed: int = 1, length: int = SEQ) -> np.ndarray:
    """[1, length] token ids: BOS, then words."""
    rng = np.random.default_rng(seed)
    return np.concatenate([[2], rng.integers(len(SPECIAL), VOCAB, size=length - 1)])[None].astype(np.int64)


class _LogitsOnly:
    """input_ids, attention_mask -> logits, without a cache (what torch.onnx exports)."""

    def __new__(cls, model):
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask):
                return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return Wrapper().eval()


def export_torch(folder: Path, path: Path, way: str) -> Path:
    """torch.onnx export of the model in `folder`: way in torchscript, dynamo_static, dynamo_dynamic."""
    import torch
    wrapper = _LogitsOnly(load_model(folder))
    ids = torch.as_tensor(sample_ids())
    example = (ids, torch.ones_like(ids))
    names = ["input_ids", "attention_mask"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if way == "torchscript":
            axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "logits"]}
            torch.onnx.export(wrapper, example, str(path), input_names=names, output_names=["logits"],
                              dynamic_axes=axes, opset_version=17, dynamo=False)
        elif way in ("dynamo_static", "dynamo_dynamic"):
            shapes = None
            if way == "dynamo_dynamic":
                dims = {0: torch.export.Dim("batch", max=8), 1: torch.export.Dim("sequence", min=2, max=64)}
                shapes = {"input_ids": dims, "attention_mask": dims}
            program = torch.onnx.export(wrapper, example, input_names=names, output_names=["logits"],
                                        dynamic_shapes=shapes, dynamo=True, optimize=True)
            program.save(str(path))
        else:
            raise ValueError(way)
    return path


def export_optimum(folder: Path, out: Path) -> Path:
    """optimum's text-generation-with-past export, run with OPTIMUM_PYTHON; returns out/model.onnx."""
    _need(OPTIMUM_PYTHON, "optimum-onnx", "ONNXLRP_OPTIMUM_PYTHON")
    command = [OPTIMUM_PYTHON, "-m", "optimum.exporters.onnx", "--model", str(folder), "--task",
               "text-generation-with-past", "--device", "cpu", "--no-post-process", str(out)]
    _run(command, "optimum")
    return out / "model.onnx"


def _need(python: str, what: str, variable: str) -> None:
    if not Path(python).exists():
        raise FileNotFoundError(f"no {what} environment at {python} (set {variable})")


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{(result.stderr or result.stdout)[-3000:]}")


def export_genai(folder: Path, out: Path, precision: str, extra: dict | None = None) -> Path:
    """onnxruntime-genai's model builder for the CPU, run with GENAI_PYTHON through llm_genai_build.py (the
    builder with Gemma3's config fixed for transformers 5.x); returns out/model.onnx."""
    _need(GENAI_PYTHON, "onnxruntime-genai", "ONNXLRP_GENAI_PYTHON")
    cache = out.parent / f"{out.name}.cache"
    command = [GENAI_PYTHON, str(TOOLS / "llm_genai_build.py"), "-i", str(folder), "-o", str(out),
               "-p", precision, "-e", "cpu", "-c", str(cache)]
    if extra:
        command += ["--extra_options", *(f"{k}={v}" for k, v in extra.items())]
    try:
        _run(command, f"builder ({precision})")
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return out / "model.onnx"


def export(folder: Path, way: str) -> Path:
    """The export `way` (one of EXPORTS) of the HF folder, written beside it; returns the .onnx path."""
    base = folder.parent
    if way in ("torchscript", "dynamo_static", "dynamo_dynamic"):
        return export_torch(folder, base / f"{way}.onnx", way)
    if way == "optimum":
        return export_optimum(folder, base / "optimum")
    if way.startswith("genai_"):
        precision, extra = GENAI_OPTIONS.get(way, (way.split("_", 1)[1], None))
        return export_genai(folder, base / way, precision, extra)
    raise ValueError(f"unknown export {way!r}; one of {EXPORTS}")


def fixture(arch: str, way: str | None = None, seed: int = 0, root: Path | None = None) -> Path:
    """The cached HF folder (way None) or export of (arch, seed), made on first use."""
    base = (root or fixtures_dir()) / f"{arch}-s{seed}"
    folder = base / "hf"
    if not (folder / "model.safetensors").exists():
        make_hf_folder(arch, folder, seed)
    if way is None:
        return folder
    target = {"optimum": base / "optimum" / "model.onnx"}.get(
        way, base / way / "model.onnx" if way.startswith("genai_") else base / f"{way}.onnx")
    if not target.exists():
        export(folder, way)
    return target


_LOGITS_SCRIPT = """
import sys, numpy as np, torch, transformers
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], attn_implementation="eager",
                                                          dtype=torch.float64).eval()
ids = torch.as_tensor(np.load(sys.argv[2]))
with torch.no_grad():
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
np.save(sys.argv[3], logits.numpy())
print(transformers.__version__)
"""


def hf_logits(python: str, folder: Path, ids: np.ndarray, work: Path) -> tuple[np.ndarray, str]:
    """float64 logits of the HF folder as the transformers of `python` reads it, and that version."""
    np.save(work / "ids.npy", ids)
    out = work / f"logits_{abs(hash(python))}.npy"
    done = subprocess.run([python, "-c", _LOGITS_SCRIPT.replace("dtype=", "torch_dtype=")
                           if python == sys.executable else _LOGITS_SCRIPT, str(folder), str(work / "ids.npy"),
                           str(out)], capture_output=True, text=True, timeout=600)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return np.load(out), done.stdout.strip().splitlines()[-1]


def check_folder_across_versions(folder: Path, work: Path, length: int = 24) -> dict:
    """Both transformers versions read the same model from `folder`: max |logits difference| (float64), on
    ids longer than Gemma3's sliding window."""
    ids = sample_ids(7, length)
    here, version_here = hf_logits(sys.executable, folder, ids, work)
    there, version_there = hf_logits(GENAI_PYTHON, folder, ids, work)
    return {"versions": [version_here, version_there], "max_abs_diff": float(np.abs(here - there).max()),
            "max_abs_logit": float(np.abs(here).max())}


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file in its folder for a folder-shaped export (model.onnx + data)."""
    if path.parent.name in ("optimum",) or path.parent.name.startswith("genai_"):
        return sum(p.stat().st_size for p in path.parent.iterdir() if p.is_file())
    return path.stat().st_size


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--arch", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--exports", nargs="+", default=list(EXPORTS), choices=EXPORTS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    failed = 0
    for arch in args.arch:
        start = time.perf_counter()
        folder = fixture(arch, None, args.seed, args.out)
        print(json.dumps({"arch": arch, "step": "hf", "seconds": round(time.perf_counter() - start, 2),
                          "bytes": sum(p.stat().st_size for p in folder.iterdir()), "path": str(folder)}), flush=True)
        for way in args.exports:
            start = time.perf_counter()
            try:
                path = fixture(arch, way, args.seed, args.out)
                row = {"bytes": size_of(path), "path": str(path)}
            except Exception as error:   # report and go on: which exports fail is part of the result
                failed += 1
                row = {"error": f"{type(error).__name__}: {str(error)[-1500:]}"}
            print(json.dumps({"arch": arch, "step": way, "seconds": round(time.perf_counter() - start, 2), **row}),
                  flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
