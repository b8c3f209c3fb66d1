"""LXT 2.1 reference relevance for a tiny HuggingFace model, in float64, in a process of its own
(lxt.efficient.monkey_patch changes transformers' classes for the whole process).

    python lxt_oracle.py CASE.npz OUT.npz

CASE.npz holds: kind (bert | gpt2 | vit), variant (attn_lrp | cp_lrp), config (the model's JSON config),
state (a torch.save'd state_dict file path), the inputs, target and position; with linear_gamma and
conv_gamma, Zennit's Gamma rules on the Linear and Conv2d layers (LXT's ViT recipe); with model_dir, a
trained BERT (from_pretrained) mean-pooled and explained along `direction` (R_out = z * direction). OUT.npz gets `relevance`
(per token, or per pixel) and `logits`.
"""
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "zennit_stub"))

import torch  # noqa: E402
from lxt.efficient import monkey_patch  # noqa: E402
from lxt.efficient.patches import (layer_norm_forward, non_linear_forward, patch_attention,  # noqa: E402
                                   patch_cp_attention, patch_method)


def patch(kind: str, variant: str):
    if kind == "bert":
        import transformers.models.bert.modeling_bert as module
        from lxt.efficient.models.bert import attnLRP
        if variant != "attn_lrp":
            raise SystemExit("LXT has AttnLRP only for BERT")
        monkey_patch(module, attnLRP)
    elif kind == "gpt2":
        import transformers.models.gpt2.modeling_gpt2 as module
        from lxt.efficient.models.gpt2 import attnLRP, cp_LRP
        monkey_patch(module, attnLRP if variant == "attn_lrp" else cp_LRP)
    elif kind == "vit":
        import transformers.models.vit.modeling_vit as module
        from transformers.activations import GELUActivation
        monkey_patch(module, {
            module: patch_attention if variant == "attn_lrp" else patch_cp_attention,
            torch.nn.LayerNorm: partial(patch_method, layer_norm_forward),
            GELUActivation: partial(patch_method, non_linear_forward, keep_original=True),
        })
    return module


def main(case_path: str, out_path: str) -> None:
    case = np.load(case_path, allow_pickle=False)
    kind, variant = str(case["kind"]), str(case["variant"])
    patch(kind, variant)
    import transformers
    if "model_dir" in case:   # a trained sentence encoder: mean-pooled BERT, explained along a direction
        np.savez(out_path, relevance=_pooled_encoder(case, transformers))
        return
    config = transformers.AutoConfig.for_model(**json.loads(str(case["config"])))
    config._attn_implementation = "eager"
    model_class = {"bert": transformers.BertForSequenceClassification, "gpt2": transformers.GPT2LMHeadModel,
                   "vit": transformers.ViTForImageClassification}[kind]
    model = model_class(config)
    model.load_state_dict(torch.load(str(case["state"]), weights_only=True))
    model = model.double().eval()
    if "linear_gamma" in case:   # LXT's ViT recipe: Zennit's Gamma on Conv2d and Linear, in gradient form
        from lxt.efficient import monkey_patch_zennit
        from zennit.composites import LayerMapComposite
        from zennit.rules import Gamma
        monkey_patch_zennit()
        LayerMapComposite([(torch.nn.Conv2d, Gamma(float(case["conv_gamma"]))),
                           (torch.nn.Linear, Gamma(float(case["linear_gamma"])))]).register(model)
    target = torch.as_tensor(case["target"])
    if kind == "vit":
        x = torch.as_tensor(case["pixel_values"], dtype=torch.float64).requires_grad_()
        logits = model(pixel_values=x).logits
        logits[torch.arange(len(target)), target].sum().backward()
        relevance = (x * x.grad).detach().numpy()
    else:
        ids = torch.as_tensor(case["input_ids"])
        embeddings = model.get_input_embeddings()(ids).detach().requires_grad_()
        kwargs = {"attention_mask": torch.as_tensor(case["attention_mask"])} if "attention_mask" in case else {}
        logits = model(inputs_embeds=embeddings, **kwargs).logits
        if kind == "gpt2":
            position = torch.as_tensor(case["position"])
            picked = logits[torch.arange(len(target)), position, target]
        else:
            picked = logits[torch.arange(len(target)), target]
        picked.sum().backward()
        relevance = (embeddings * embeddings.grad).sum(-1).detach().numpy()
    np.savez(out_path, relevance=relevance, logits=logits.detach().numpy())


def _pooled_encoder(case, transformers) -> np.ndarray:
    bert = transformers.BertModel.from_pretrained(str(case["model_dir"]), attn_implementation="eager")
    bert = bert.double().eval()
    ids, mask = torch.as_tensor(case["input_ids"]), torch.as_tensor(case["attention_mask"])
    x = bert.get_input_embeddings()(ids).detach().requires_grad_()
    hidden = bert(inputs_embeds=x, attention_mask=mask).last_hidden_state
    weights = mask.unsqueeze(-1).double()
    embedding = (hidden * weights).sum(1) / weights.sum(1)
    (embedding * torch.as_tensor(case["direction"]).double()).sum().backward()   # R_out = z * r
    return (x * x.grad).sum(-1).detach().numpy()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
