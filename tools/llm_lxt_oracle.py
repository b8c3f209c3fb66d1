"""LXT 2.1 reference relevance for a decoder LLM saved as a HuggingFace folder, in float64, in a process of its
own (lxt.efficient.monkey_patch changes transformers' classes for the whole process).

    python tools/llm_lxt_oracle.py HF_FOLDER IDS.npy OUT.npz [--variant attn_lrp|cp_lrp] [--target T]

Needs torch, transformers 4.52.4 (the version LXT 2.1's patch maps are written against) and lxt. The start
is the logit of the predicted next token (argmax, or --target) at the last position, R_out = z there and 0
elsewhere; the relevance of token t is sum_d x_td * dz/dx_td over its input embedding x_t (the output of
the embedding lookup, which for Gemma3 includes the sqrt(hidden) scale). OUT gets `relevance` [batch, seq],
`target` [batch], `logits` [batch, seq, vocab] (float64) and `variant`.

LXT's maps (lxt/efficient/models): llama, qwen2, qwen3 and gemma3 each have attnLRP and cp_LRP: the gated
MLP's product gets the uniform rule (gradient halved) and the activation the identity rule, every RMSNorm
(Qwen3's and Gemma3's per-head q/k norms too) the identity rule on the normalisation, q and k get 1/4 and v
1/2 of the gradient in AttnLRP; CP-LRP stops the gradient through q, k and the gate instead. LXT's RMSNorm
patches compute the normalisation in float32 even in a float64 model (rms_norm_forward casts to float32,
Gemma3's forward calls _norm(x.float())), so the reference is float64 up to those float32 steps (about 1e-7).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import numpy as np

# lxt imports torchvision.models.vision_transformer, which has no CPU build here: the tests' stand-in.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "zennit_stub"))

MODULES = {"llama": "transformers.models.llama.modeling_llama",
           "qwen2": "transformers.models.qwen2.modeling_qwen2",
           "qwen3": "transformers.models.qwen3.modeling_qwen3",
           "gemma3_text": "transformers.models.gemma3.modeling_gemma3",
           "gemma3": "transformers.models.gemma3.modeling_gemma3"}
MAPS = {"llama": "lxt.efficient.models.llama", "qwen2": "lxt.efficient.models.qwen2",
        "qwen3": "lxt.efficient.models.qwen3", "gemma3_text": "lxt.efficient.models.gemma3",
        "gemma3": "lxt.efficient.models.gemma3"}


def patch(model_type: str, variant: str) -> None:
    from lxt.efficient import monkey_patch
    if model_type not in MODULES:
        raise SystemExit(f"LXT 2.1 has no patch map for model_type {model_type!r} (it has {sorted(MODULES)})")
    maps = importlib.import_module(MAPS[model_type])
    monkey_patch(importlib.import_module(MODULES[model_type]), maps.attnLRP if variant == "attn_lrp" else maps.cp_LRP)


def relevance(folder: str, ids: np.ndarray, variant: str = "attn_lrp", target=None) -> dict:
    import json

    import torch
    model_type = json.loads((Path(folder) / "config.json").read_text())["model_type"]
    patch(model_type, variant)
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager",
                                                              torch_dtype=torch.float64).eval()
    ids = torch.as_tensor(ids)
    embeddings = model.get_input_embeddings()(ids).detach().requires_grad_()
    logits = model(inputs_embeds=embeddings, attention_mask=torch.ones_like(ids), use_cache=False).logits
    last = logits[:, -1]
    target = last.argmax(-1) if target is None else torch.as_tensor(np.broadcast_to(target, (ids.shape[0],)))
    last[torch.arange(ids.shape[0]), target].sum().backward()
    return {"relevance": (embeddings * embeddings.grad).sum(-1).detach().numpy(), "target": target.numpy(),
            "logits": logits.detach().numpy(), "variant": np.asarray(variant)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("ids")
    parser.add_argument("out")
    parser.add_argument("--variant", default="attn_lrp", choices=["attn_lrp", "cp_lrp"])
    parser.add_argument("--target", type=int, default=None)
    args = parser.parse_args(argv)
    np.savez(args.out, **relevance(args.folder, np.load(args.ids), args.variant, args.target))


if __name__ == "__main__":
    main()
