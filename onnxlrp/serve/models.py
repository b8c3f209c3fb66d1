"""The models a server explains: each by name, with its input, classes and one Explainer per composite."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import composites as composites_module
from ..errors import InputError, OnnxLrpError
from ..inputs import channels_last
from ..llm import model_file, tokenizer_beside
from ..runtime import Explainer

# What the page offers, with the parameters each composite takes (name -> default)
COMPOSITES = {
    "epsilon_plus_flat": {}, "epsilon_plus": {}, "epsilon_gamma_box": {"low": 0.0, "high": 1.0, "gamma": 0.25},
    "epsilon_alpha2_beta1_flat": {}, "excitation_backprop": {}, "epsilon": {"epsilon": 1e-6}, "lrp0": {},
    "attn_lrp": {"gamma": 0.0}, "cp_lrp": {"gamma": 0.0},
}
# Image transformers (ViTs) are explained with Gamma on their linear layers, LXT's ViT recipe: on the demo ViT
# it halves the negative relevance (tools/demo_heatmaps.py); text models keep LXT's plain gradient
IMAGE_TRANSFORMER_PARAMS = {"attn_lrp": {"gamma": 0.25}, "cp_lrp": {"gamma": 0.25}}
MODES = ("logit", "prob", "contrastive", "one")
MAX_NEW_TOKENS = 100    # the most tokens a request may have a language model generate


@dataclass
class ServedModel:
    name: str
    path: Path
    input_name: str
    input_shape: list            # [batch, ...], None where free
    classes: int
    transformer: bool            # ViT-style and text models take the attn_lrp / cp_lrp composites
    tokenizer: object = None     # text models: a tokenizers.Tokenizer
    generates: bool = False      # a language model ([batch, seq, vocab] logits): it answers a prompt
    _explainers: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def kind(self) -> str:
        if self.tokenizer is None:
            return "image"
        return "generation" if self.generates else "text"

    def describe(self) -> dict:
        layout = None if self.tokenizer is not None else ("NHWC" if channels_last(self.input_shape) else "NCHW")
        described = {"name": self.name, "kind": self.kind,
                     "input": {"name": self.input_name, "shape": self.input_shape, "layout": layout},
                     "classes": self.classes, "composites": self.composites(),
                     "default_composite": self.composites()[0], "modes": list(MODES),
                     "params": {name: self.params(name) for name in self.composites()}}
        if self.generates:
            described["max_new_tokens"] = MAX_NEW_TOKENS
        return described

    def composites(self) -> list[str]:
        names = [n for n in COMPOSITES if (n in ("attn_lrp", "cp_lrp")) == self.transformer]
        return names

    def params(self, composite: str) -> dict:
        """The parameters `composite` takes for this model, with their defaults."""
        defaults = dict(COMPOSITES[composite])
        if self.transformer and self.kind == "image":
            defaults.update(IMAGE_TRANSFORMER_PARAMS.get(composite, {}))
        return defaults

    def explainer(self, composite: str, params: dict) -> Explainer:
        if composite not in self.composites():
            raise InputError(f"composite '{composite}' is not offered for model '{self.name}'; choose one of "
                             f"{', '.join(self.composites())}")
        allowed = self.params(composite)
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise InputError(f"composite '{composite}' takes no parameter {', '.join(unknown)}"
                             + (f"; it takes {', '.join(allowed)}" if allowed else ""))
        values = {**allowed, **{k: float(v) for k, v in params.items()}}
        key = (composite, tuple(sorted(values.items())))
        with self._lock:
            if key not in self._explainers:
                if len(self._explainers) >= 16:     # a bounded cache: parameters come from requests
                    self._explainers.pop(next(iter(self._explainers)))
                self._explainers[key] = Explainer(str(self.path), composite=composites_module.get(composite, **values))
            return self._explainers[key]


def load_served(paths: list[str], tokenizers: dict[str, str] | None = None) -> dict[str, ServedModel]:
    """tokenizers: model name (file stem) -> tokenizer.json, or "" -> one for every text model."""
    tokenizers = tokenizers or {}
    served = {}
    for text in paths:
        path = model_file(text)                  # a folder (onnxruntime-genai's, optimum's): its model.onnx
        explainer = Explainer(str(path))         # checks the file; the default composite reads its shapes
        name = path.parent.name if path.name == "model.onnx" and path.parent.name else path.stem
        while name in served:
            name += "_"
        pasts = explainer.decoder.pasts           # a decoder's cache inputs are float but no data
        takes_tokens = not any(v.type.tensor_type.elem_type == 1 for v in explainer.model.graph.input
                               if v.name not in {t.name for t in explainer.model.graph.initializer} | set(pasts))
        transformer = takes_tokens or _is_transformer(explainer)
        compiled = (explainer.replace(composite="cp_lrp") if transformer else explainer).compiled()
        input_name = next(iter(compiled.relevance_outputs))
        value = next(v for v in explainer.model.graph.input if v.name == input_name)
        shape = [None] + [d.dim_value if d.HasField("dim_value") else None
                          for d in list(value.type.tensor_type.shape.dim)[1:]]
        tokenizer = None
        if takes_tokens:
            source = tokenizers.get(name) or tokenizers.get("") or tokenizer_beside(path)
            if not source:
                raise OnnxLrpError(f"'{path}' takes token ids and has no tokenizer.json beside it: give its "
                                   f"tokenizer, --tokenizer {name}=tokenizer.json")
            from ..text import load_tokenizer
            tokenizer = load_tokenizer(source)
        elif len(shape) != 4:
            raise OnnxLrpError(f"'{path}': onnxlrp serve explains image classifiers ([batch, C, H, W] or "
                               f"[batch, H, W, C] input) and text models; this one takes {shape}")
        if not compiled.n_classes:
            raise OnnxLrpError(f"'{path}': its output is not [batch, classes] or [batch, seq, vocab] logits")
        served[name] = ServedModel(name=name, path=path, input_name=input_name, input_shape=shape,
                                   classes=compiled.n_classes, transformer=transformer, tokenizer=tokenizer,
                                   generates=tokenizer is not None and compiled.position_input is not None)
    return served


def _is_transformer(explainer: Explainer) -> bool:
    """A ViT-style graph (attention: a Softmax that feeds a MatMul): explained with AttnLRP / CP-LRP."""
    graph = explainer.model.graph
    probabilities = {o for node in graph.node if node.op_type == "Softmax" for o in node.output}
    for node in graph.node:   # in topological order: follow them through casts and dropouts
        if node.op_type in ("Cast", "Identity", "Dropout", "Where") and probabilities.intersection(node.input):
            probabilities.update(node.output)
    return any(node.op_type == "MatMul" and probabilities.intersection(node.input) for node in graph.node)


def relevance_summary(relevance: np.ndarray, explained_score: float) -> dict:
    total = float(relevance.sum())
    return {"sum": total, "positive": float(np.clip(relevance, 0, None).sum()),
            "negative": float(np.clip(relevance, None, 0).sum()), "explained_score": explained_score,
            "conservation": total / explained_score if explained_score else None}
