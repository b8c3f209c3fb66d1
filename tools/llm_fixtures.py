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
relevance of the next token spreads over many positions (the note on tiny transformers in tests/transformers/tiny_transformers.py). Prints one JSON line per step with
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
BENCH_ARCHS = ("qwen2_05b", "llama_35m", "qwen2_05b_vocab", "qwen3_06b", "gemma3_270m")   # built on request only
# (qwen2_05b: 1.5 GB in float32; qwen2_05b_vocab, the same with Qwen2.5's own vocabulary of 151936: 2.5 GB;
# qwen3_06b and gemma3_270m: the shapes of Qwen3-0.6B and Gemma 3 270M with a vocabulary of 8192, 1.8 and 0.4 GB)
EXPORTS = ("torchscript", "dynamo_static", "dynamo_dynamic", "dynamo_opset23", "optimum", "genai_fp32", "genai_int4",
           "genai_int8", "genai_int4_asym", "ort_qdq_int4_weights", "ort_dynamic_int8", "ort_qdq_static_int8")
# onnxruntime.quantization on the dynamo (dynamic shapes) export: weight-only int4 as DequantizeLinear of constants
# (QDQ), dynamic int8 (weights int8, activations quantised at run time), static QDQ int8 (weights and activations).
ORT_QUANTISED = ("ort_qdq_int4_weights", "ort_dynamic_int8", "ort_qdq_static_int8")
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
    """The HF config: 2 layers, hidden 64, 4 query heads and 2 key/value heads of 16, MLP width 96, vocabulary
    128. No Linear may have vocab_size outputs but the LM head: onnxruntime-genai's builder 0.18 takes every
    nn.Linear with out_features == vocab_size for the LM head (an MLP of width 128 had its gate projection
    wired to `logits`)."""
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                  rms_norm_eps=1e-6, rope_theta=10000.0, initializer_range=0.2, attention_dropout=0.0,
                  pad_token_id=1, bos_token_id=2, eos_token_id=3, torch_dtype="float32", use_cache=True)
    if arch == "llama":
        return dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu",
                    tie_word_embeddings=False, attention_bias=False, mlp_bias=False, **common)
    if arch == "qwen2_05b":   # the benchmark: Qwen2.5-0.5B's shape, vocabulary 8192 (the tokenizer keeps 128 words)
        return {**config_of("qwen2"), "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                "num_attention_heads": 14, "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 8192,
                "max_position_embeddings": 1024, "rope_theta": 1_000_000.0, "tie_word_embeddings": True}
    if arch == "qwen2_05b_vocab":   # Qwen2.5-0.5B's shape with its vocabulary: the LM head as large as it is
        return {**config_of("qwen2_05b"), "vocab_size": 151936}
    if arch == "llama_35m":   # the long-prompt benchmark: 12 layers, hidden 512, GQA, 35 M parameters
        return {**config_of("llama"), "hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 12,
                "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 8192,
                "max_position_embeddings": 8192}
    if arch == "qwen3_06b":   # Qwen3-0.6B's shape: 28 layers, head_dim 128 wider than hidden / heads
        return {**config_of("qwen3"), "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 8192,
                "max_position_embeddings": 8192, "rope_theta": 1_000_000.0, "tie_word_embeddings": True}
    if arch == "gemma3_270m":   # Gemma 3 270M's shape: 18 layers, one key/value head of 256, windows of 512 tokens
        layer_types = ["full_attention" if (k + 1) % 6 == 0 else "sliding_attention" for k in range(18)]
        return {**config_of("gemma3"), "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18,
                "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "query_pre_attn_scalar": 256,
                "sliding_window": 512, "sliding_window_pattern": 6, "layer_types": layer_types, "vocab_size": 8192,
                "max_position_embeddings": 8192}
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


EMBEDDING_STD = {"llama": 1.0, "qwen2": 1.0, "qwen3": 1.0, "gemma3": 0.05, "qwen2_05b": 1.0, "llama_35m": 1.0,
                 "qwen2_05b_vocab": 1.0, "qwen3_06b": 1.0, "gemma3_270m": 0.05}


def make_model(arch: str, seed: int = 0):
    """The HF causal LM with random weights (float32, eager attention, eval mode).

    Linear weights N(0, 0.2^2), norm scales 1 + N(0, 0.2^2), biases N(0, 0.1^2), embeddings N(0, EMBEDDING_STD^2):
    with these the last position's own token takes about a quarter of |R| under AttnLRP (HF's 0.02 init puts
    over 80 % there). Gemma3 multiplies its embeddings by sqrt(hidden) = 8 and normalises every block's
    output before the residual add, so its embedding is drawn smaller or the residual stream is all token."""
    import torch
    import transformers
    torch.manual_seed(seed)
    gemma = config_of(arch)["model_type"] == "gemma3_text"
    config = transformers.AutoConfig.for_model(**config_of(arch))
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:   # Gemma's RMSNorm scales by 1 + weight, the others by weight
                param.copy_((0.0 if gemma else 1.0) + 0.2 * torch.randn_like(param))
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
    """torch.onnx export of the model in `folder`: way in torchscript, dynamo_static, dynamo_dynamic (eager
    attention), dynamo_opset23 (SDPA attention, dynamic shapes, opset 23: RMSNormalization, RotaryEmbedding and
    Attention nodes)."""
    import torch
    import transformers
    if way == "dynamo_opset23":
        model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="sdpa",
                                                                  torch_dtype=torch.float32).eval()
    else:
        model = load_model(folder)
    wrapper = _LogitsOnly(model)
    # A trace follows the sliding-window branch only where the example is longer than the window: traced shorter,
    # the export fails on any prompt longer than the window (Gemma 3 270M's 512).
    config = model.config   # Qwen's configs carry a window of 4096 with use_sliding_window off
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    window = window if way == "torchscript" else None
    ids = torch.as_tensor(sample_ids(length=max(SEQ, window + 2) if window else SEQ))
    example = (ids, torch.ones_like(ids))
    names = ["input_ids", "attention_mask"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if way == "torchscript":
            axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "logits"]}
            torch.onnx.export(wrapper, example, str(path), input_names=names, output_names=["logits"],
                              dynamic_axes=axes, opset_version=17, dynamo=False)
        elif way in ("dynamo_static", "dynamo_dynamic", "dynamo_opset23"):
            shapes = None
            if way != "dynamo_static":
                dims = {0: torch.export.Dim("batch", max=8), 1: torch.export.Dim("sequence", min=2, max=64)}
                shapes = {"input_ids": dims, "attention_mask": dims}
            opset = {"opset_version": 23} if way == "dynamo_opset23" else {}
            program = torch.onnx.export(wrapper, example, input_names=names, output_names=["logits"],
                                        dynamic_shapes=shapes, dynamo=True, optimize=True, **opset)
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
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False,
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


def export_ort_quantised(source: Path, path: Path, way: str) -> Path:
    """onnxruntime.quantization applied to the float export `source` (see ORT_QUANTISED)."""
    import onnx
    from onnxruntime import quantization as q
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if way == "ort_qdq_int4_weights":
            from onnxruntime.quantization.matmul_nbits_quantizer import (
                MatMulNBitsQuantizer,
            )
            quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), bits=4, block_size=32, is_symmetric=False,
                                             quant_format=q.QuantFormat.QDQ)
            quantizer.process()
            quantizer.model.save_model_to_file(str(path))
        elif way == "ort_dynamic_int8":
            q.quantize_dynamic(str(source), str(path), weight_type=q.QuantType.QInt8, per_channel=True)
        elif way == "ort_qdq_static_int8":
            class Calibration(q.CalibrationDataReader):
                def __init__(self):
                    self.rows = iter([{"input_ids": sample_ids(seed, SEQ),
                                       "attention_mask": np.ones((1, SEQ), np.int64)} for seed in range(10, 18)])

                def get_next(self):
                    return next(self.rows, None)
            q.quantize_static(str(source), str(path), Calibration(), quant_format=q.QuantFormat.QDQ,
                              per_channel=True, activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
                              op_types_to_quantize=["MatMul"])   # every op: the mask's fills wreck the int8 range
        else:
            raise ValueError(way)
    return path


def export(folder: Path, way: str) -> Path:
    """The export `way` (one of EXPORTS) of the HF folder, written beside it; returns the .onnx path."""
    base = folder.parent
    if way in ("torchscript", "dynamo_static", "dynamo_dynamic", "dynamo_opset23"):
        return export_torch(folder, base / f"{way}.onnx", way)
    if way == "optimum":
        return export_optimum(folder, base / "optimum")
    if way.startswith("genai_"):
        precision, extra = GENAI_OPTIONS.get(way, (way.split("_", 1)[1], None))
        return export_genai(folder, base / way, precision, extra)
    if way in ORT_QUANTISED:   # from opset 18+: the int4 QDQ quantiser moves to opset 21 without converting
        source = base / "dynamo_dynamic.onnx"   # ReduceMean's axes attribute (TorchScript's opset 17 fails)
        if not source.exists():
            export_torch(folder, source, "dynamo_dynamic")
        return export_ort_quantised(source, base / f"{way}.onnx", way)
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
dtype = {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": torch.float64}
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], attn_implementation="eager", **dtype).eval()
ids = torch.as_tensor(np.load(sys.argv[2]))
with torch.no_grad():
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
np.save(sys.argv[3], logits.numpy())
print(transformers.__version__)
"""


def hf_logits(python: str, folder: Path, ids: np.ndarray, work: Path) -> tuple[np.ndarray, str]:
    """float64 logits of the HF folder as the transformers of `python` reads it, and that version."""
    np.save(work / "ids.npy", ids)
    out = work / "logits.npy"
    done = subprocess.run([python, "-c", _LOGITS_SCRIPT, str(folder), str(work / "ids.npy"), str(out)],
                          capture_output=True, text=True, timeout=600, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return np.load(out), done.stdout.strip().splitlines()[-1]


def check_folder_across_versions(folder: Path, work: Path, length: int = 24) -> dict:
    """Every environment reads the same model from `folder`: per transformers version, the max |difference|
    of its float64 logits from this environment's, on ids longer than Gemma3's sliding window."""
    ids = sample_ids(7, length)
    here, version_here = hf_logits(sys.executable, folder, ids, work)
    result = {version_here: 0.0}
    for python in (OPTIMUM_PYTHON, GENAI_PYTHON):
        if Path(python).exists():
            there, version = hf_logits(python, folder, ids, work)
            result[version] = float(np.abs(here - there).max())
    return result


def ort_feeds(path: Path, ids: np.ndarray, head_dim: int = 16) -> dict[str, np.ndarray]:
    """Inputs for a prompt without a past: ids, a mask of ones, positions 0.., and past_key_values.* of past
    length 0 (symbolic head dimensions get head_dim). A genai sliding-window layer (past length
    `past_sliding_length`, GroupQueryAttention with sliding_window_cache=1) needs a cache of capacity at least
    its window even when empty: it gets genai_config's window_size zeros, which seqlens_k marks as unused."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    genai_config = path.parent / "genai_config.json"
    window = 0
    if genai_config.exists():
        window = (json.loads(genai_config.read_text())["model"]["decoder"].get("sliding_window") or {}).get(
            "window_size", 0)
    feeds = {}
    for value in model.graph.input:
        name = value.name
        if name == "input_ids":
            feeds[name] = ids
        elif name == "attention_mask":
            feeds[name] = np.ones_like(ids)
        elif name == "position_ids":
            feeds[name] = np.broadcast_to(np.arange(ids.shape[1]), ids.shape).astype(np.int64)
        elif name.startswith("past_key_values"):
            def size(d):
                if d.dim_value:
                    return d.dim_value
                if d.dim_param.startswith("batch"):
                    return ids.shape[0]
                if "sliding" in d.dim_param:
                    return window
                return 0 if ("sequence" in d.dim_param or "length" in d.dim_param) else head_dim
            feeds[name] = np.zeros([size(d) for d in value.type.tensor_type.shape.dim], np.float32)
        else:
            raise ValueError(f"no feed for input {name}")
    return feeds


def ort_feeds_with_past(path: Path, prefix: np.ndarray, ids: np.ndarray, head_dim: int = 16) -> dict:
    """Inputs for `ids` after `prefix` (batch 1): the past is the present the model returns for `prefix`, the mask
    covers both, positions continue from len(prefix). For a past length > 0 in optimum and genai graphs."""
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    first = dict(zip(names, session.run(None, ort_feeds(path, prefix, head_dim)), strict=True))
    feeds = ort_feeds(path, ids, head_dim)
    P = prefix.shape[1]
    for name in feeds:
        if name.startswith("past_key_values."):
            feeds[name] = first[name.replace("past_key_values.", "present.")]
        elif name == "attention_mask":
            feeds[name] = np.ones((ids.shape[0], P + ids.shape[1]), np.int64)
        elif name == "position_ids":
            feeds[name] = (P + np.arange(ids.shape[1]))[None].astype(np.int64)
    return feeds


def ort_logits(path: Path, ids: np.ndarray, head_dim: int = 16) -> np.ndarray:
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], ort_feeds(path, ids, head_dim))[0]


def dequantized_state(genai_model: Path, config: dict) -> dict[str, np.ndarray]:
    """The HF parameters that a genai int4/int8 export's MatMulNBits and GatherBlockQuantized constants stand
    for, dequantised (W = (q - zero_point) * scale per block): {"model.layers.0.self_attn.q_proj.weight": ...}.
    The fused qkv projection is split back into q, k and v by the head counts of `config`."""
    import onnx
    from onnx import numpy_helper
    sys.path.insert(0, str(TOOLS.parent / "tests" / "llm"))
    import contrib_reference as R
    model = onnx.load(str(genai_model))
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    types = {i.name: i.data_type for i in model.graph.initializer}
    for node in model.graph.node:   # constants made in the graph: a tied table is Reshape(lm_head's blocks)
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Reshape" and all(i in consts for i in node.input):
            consts[node.output[0]] = consts[node.input[0]].reshape(consts[node.input[1]])
            types[node.output[0]] = types.get(node.input[0], onnx.TensorProto.UINT8)
    attrs = lambda node: {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    q_width = config["num_attention_heads"] * config["head_dim"]
    kv_width = config["num_key_value_heads"] * config["head_dim"]
    state = {}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            a = attrs(node)
            zero_points = consts.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            W = R.matmul_nbits_weight(consts[node.input[1]], consts[node.input[2]], zero_points, K=a["K"], N=a["N"],
                                      bits=a.get("bits", 4), block_size=a["block_size"]).T   # [N, K] like torch
            name = node.name.removeprefix("/").split("/")   # model, layers.0, attn, qkv_proj, MatMul_Q4
            if name[0] == "lm_head":
                state["lm_head.weight"] = W
                continue
            layer, block, proj = name[1], name[2], name[3]
            prefix = f"model.{layer}.{'self_attn' if block == 'attn' else block}"
            if proj == "qkv_proj":
                for part, rows in zip("qkv", np.split(W, [q_width, q_width + kv_width])):
                    state[f"{prefix}.{part}_proj.weight"] = rows
            else:
                state[f"{prefix}.{proj}.weight"] = W
        elif node.op_type == "GatherBlockQuantized":
            a = attrs(node)
            zero_points = consts.get(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            scales = consts[node.input[2]]
            packed = types[node.input[0]] == onnx.TensorProto.UINT8   # else int4 / uint4 values
            table = R.gather_block_quantized(consts[node.input[0]], np.arange(scales.shape[0]), scales, zero_points,
                                             bits=a.get("bits", 4), block_size=a["block_size"], packed=packed)
            state["model.embed_tokens.weight"] = table
    return state


def make_dequantized_folder(folder: Path, genai_model: Path, out: Path) -> Path:
    """A copy of the HF folder whose weights are those of the quantised genai export (dequantised): the float
    model that the quantised graph computes, for the LXT reference of weight-only quantisation."""
    import torch
    config = json.loads((folder / "config.json").read_text())
    model = load_model(folder)
    state = {k: torch.as_tensor(v) for k, v in dequantized_state(genai_model, config).items()}
    if config.get("tie_word_embeddings") and "lm_head.weight" in state:
        config["tie_word_embeddings"] = False   # lm_head and the table are quantised apart
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    missing = set(state) - set(dict(model.named_parameters()))
    if missing:
        raise KeyError(f"no HF parameter for {sorted(missing)}")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in state:
                param.copy_(state[name])
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    (out / "config.json").write_text(json.dumps({**json.loads((out / "config.json").read_text()),
                                                 **{k: v for k, v in config.items() if k == "layer_types"}},
                                                indent=2, sort_keys=True))
    write_tokenizer(out)
    return out


def lxt_reference(folder: Path, ids: np.ndarray, variant: str, work: Path, target=None) -> dict[str, np.ndarray]:
    """LXT's relevance of the next token at the last position (llm_lxt_oracle.py, run in a process of its own
    with this environment's python): relevance [batch, seq], target, logits."""
    np.save(work / "lxt_ids.npy", ids)
    out = work / f"lxt_{variant}.npz"
    command = [sys.executable, str(TOOLS / "llm_lxt_oracle.py"), str(folder), str(work / "lxt_ids.npy"), str(out),
               "--variant", variant] + ([] if target is None else ["--target", str(int(target))])
    _run(command, "LXT oracle")
    with np.load(out) as result:
        return {key: result[key] for key in result.files}


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file in its folder for a folder-shaped export (model.onnx + data)."""
    if path.parent.name in ("optimum",) or path.parent.name.startswith("genai_"):
        return sum(p.stat().st_size for p in path.parent.iterdir() if p.is_file())
    return path.stat().st_size


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--arch", nargs="+", default=list(ARCHS), choices=ARCHS + BENCH_ARCHS)
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
            except Exception as error:  # noqa: BLE001 -- report and go on: which exports fail is part of the result
                failed += 1
                row = {"error": f"{type(error).__name__}: {str(error)[-1500:]}"}
            print(json.dumps({"arch": arch, "step": way, "seconds": round(time.perf_counter() - start, 2), **row}),
                  flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
