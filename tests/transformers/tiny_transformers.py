"""Tiny HuggingFace transformers with random weights, exported to ONNX several ways: the test fixtures of
the LXT parity tests (needs torch and transformers; the tests skip without them).

Weights are drawn larger than HuggingFace's 0.02 init, LayerNorm scales and all biases random too, so
that relevance spreads over many tokens and every rule shows in the numbers."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

KINDS = ("bert", "gpt2", "vit")
EXPORTS = ("torchscript14", "torchscript17", "dynamo", "ort_optimized")
VOCAB, SEQ, IMAGE = 40, 9, 16


def config_of(kind: str) -> dict:
    common = dict(initializer_range=0.25, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if kind == "bert":
        return dict(model_type="bert", vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=32, num_labels=3, **common)
    if kind == "gpt2":
        return dict(model_type="gpt2", vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=32,
                    initializer_range=0.25, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return dict(model_type="vit", image_size=IMAGE, patch_size=4, num_channels=3, hidden_size=16,
                num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, num_labels=4, **common)


def make_model(kind: str, seed: int = 0):
    import torch
    import transformers
    torch.manual_seed(seed)
    config = transformers.AutoConfig.for_model(**config_of(kind))
    config._attn_implementation = "eager"
    model_class = {"bert": transformers.BertForSequenceClassification, "gpt2": transformers.GPT2LMHeadModel,
                   "vit": transformers.ViTForImageClassification}[kind]
    model = model_class(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name.lower() or ".ln_" in name or name.startswith("transformer.ln_f"):
                param.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))
            elif kind == "vit" and ("cls_token" in name or "position_embeddings" in name):
                param.copy_(0.5 * torch.randn_like(param))
    return model


def sample_inputs(kind: str, batch: int = 2, padded: bool = False, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "vit":
        return {"pixel_values": rng.normal(size=(batch, 3, IMAGE, IMAGE)).astype(np.float32)}
    ids = rng.integers(1, VOCAB, size=(batch, SEQ)).astype(np.int64)
    if kind == "gpt2":
        return {"input_ids": ids}
    mask = np.ones_like(ids)
    if padded:
        mask[0, SEQ - 3:] = 0
        ids[0, SEQ - 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def export(model, kind: str, way: str, path: Path) -> Path:
    """Write `model` as ONNX to `path`, exported `way` (one of EXPORTS)."""
    import torch
    names = list(sample_inputs(kind))
    example = tuple(torch.as_tensor(v) for v in sample_inputs(kind).values())
    axes = {n: {0: "batch"} if kind == "vit" else {0: "batch", 1: "seq"} for n in names}
    axes["logits"] = {0: "batch"} if kind != "gpt2" else {0: "batch", 1: "seq"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if way.startswith("torchscript") or way == "ort_optimized":
            opset = 14 if way == "torchscript14" else 17
            torch.onnx.export(model, example, str(path), input_names=names, output_names=["logits"],
                              dynamic_axes=axes, opset_version=opset, dynamo=False)
        elif way == "dynamo":
            shapes = {n: {0: torch.export.Dim("batch", max=64)} if kind == "vit" else
                      {0: torch.export.Dim("batch", max=64), 1: torch.export.Dim("seq", max=32)} for n in names}
            program = torch.onnx.export(model, example, input_names=names, output_names=["logits"],
                                        dynamic_shapes=shapes, dynamo=True, optimize=True)
            program.save(str(path))
        else:
            raise ValueError(way)
    if way == "ort_optimized":
        from onnxruntime.transformers.optimizer import optimize_model
        config = config_of(kind)
        heads = config.get("num_attention_heads", config.get("n_head"))
        hidden = config.get("hidden_size", config.get("n_embd"))
        optimized = optimize_model(str(path), model_type={"bert": "bert", "gpt2": "gpt2", "vit": "vit"}[kind],
                                   num_heads=heads, hidden_size=hidden, opt_level=1)
        optimized.save_model_to_file(str(path))
    return path


def lxt_case(model, kind: str, variant: str, inputs: dict, target, position, folder: Path, **extra) -> Path:
    """The files lxt_oracle.py reads for this model and input (extra: linear_gamma, conv_gamma)."""
    import torch
    state = folder / f"{kind}.state.pt"
    if not state.exists():
        torch.save(model.state_dict(), state)
    case = folder / f"{kind}_{variant}_case.npz"
    if position is not None:
        extra["position"] = np.asarray(position)
    np.savez(case, kind=kind, variant=variant, config=json.dumps(config_of(kind)), state=str(state),
             target=np.asarray(target), **extra, **inputs)
    return case
