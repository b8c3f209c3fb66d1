"""Decoder language models as their exporters write them (torch.onnx without a cache, optimum's
text-generation-with-past, onnxruntime-genai's builder): which input takes the token ids, and the inputs
beside it that a caller need not build (tools/llm_graphs.md sections 3 and 6).

The rule for inputs left out of a feed dict (`fill`): `attention_mask` gets ones over the past and the new
tokens, `position_ids` the positions P..P+S-1 after a past of P tokens (0..S-1 without one), and every past
key or value (a float input named past*) an empty cache: P = 0 along its position axis, the batch and head
size elsewhere, except a sliding-window layer of onnxruntime-genai (a position axis named *sliding*), which
takes a zero buffer of its window that the mask marks unused. Any other input left out is an error.

The model's folder is read for what the graph leaves free: the head size (genai_config.json's head_size,
config.json's head_dim or hidden_size / num_attention_heads), genai's sliding window, the end-of-sequence
ids (generation_config.json, config.json, genai_config.json), the tokenizer.json."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from .errors import InputError, ModelLoadError

MASK, POSITIONS = "attention_mask", "position_ids"
FILLED = f"{MASK}, {POSITIONS} and the past keys and values of a decoder"


@dataclass
class Past:
    """A past key or value input: its declared dims as "batch", "positions", "window", "head" or a number."""
    name: str
    dims: list
    dtype: np.dtype
    present: str | None       # the output the model returns it in, one step later (None: no cache to feed back)

    def empty(self, batch: int, head_size: int | None, window: int | None) -> np.ndarray:
        shape = []
        for dim in self.dims:
            if dim == "batch":
                shape.append(batch)
            elif dim == "positions":
                shape.append(0)
            elif dim == "window":
                if not window:
                    raise InputError(f"past input '{self.name}' is a sliding-window buffer and the window size is not "
                                     "known: put the model's genai_config.json beside it, or give the input")
                shape.append(window)
            elif dim == "head":
                if not head_size:
                    raise InputError(f"the head size of past input '{self.name}' is free in the graph: put the "
                                     "model's genai_config.json or config.json beside it, or give the input")
                shape.append(head_size)
            else:
                shape.append(dim)
        return np.zeros(shape, self.dtype)


@dataclass
class DecoderInputs:
    """What a model takes beside its token ids, read from its graph and its folder."""
    inputs: dict[str, onnx.ValueInfoProto]    # every graph input (initialisers excluded), by name, in order
    tokens: str | None                        # the token ids input
    pasts: dict[str, Past] = field(default_factory=dict)
    head_size: int | None = None
    window: int | None = None
    logits: str | None = None                 # the [batch, seq, vocab] output
    eos_token_ids: list[int] = field(default_factory=list)
    fixed_length: int | None = None           # a sequence length fixed at export

    def fillable(self, name: str) -> bool:
        return name in self.pasts or (name in (MASK, POSITIONS) and _rank(self.inputs[name]) == 2)

    @property
    def has_cache(self) -> bool:
        """Every past input comes back as a present output: generation can feed the cache forward."""
        return bool(self.pasts) and all(p.present for p in self.pasts.values())

    def fill(self, arrays: dict, names, past_length: int | None = None) -> dict[str, np.ndarray]:
        """`arrays` with every one of `names` it lacks filled in by the rule of this module's docstring.
        past_length: the tokens a given past holds (default: read off a given past, else 0)."""
        missing = [name for name in names if name not in arrays]
        if not missing:
            return dict(arrays)
        refused = [name for name in missing if not self.fillable(name)]
        if refused or self.tokens is None or self.tokens not in arrays:
            given = sorted(arrays)
            raise InputError(f"inputs given {given}, but the model takes {list(names)}: {missing} missing (inputs "
                             f"left out are filled in only for {FILLED}, given the token ids"
                             + (f" '{self.tokens}')" if self.tokens else ")"))
        ids = np.asarray(arrays[self.tokens])
        if ids.ndim != 2:
            raise InputError(f"'{self.tokens}' takes token ids shaped [batch, sequence]; got shape {list(ids.shape)}")
        batch, length = ids.shape
        if past_length is None:
            past_length = self._given_past_length(arrays)
        filled = dict(arrays)
        for name in missing:
            if name == MASK:
                filled[name] = np.ones((batch, past_length + length), _dtype(self.inputs[name]))
            elif name == POSITIONS:
                positions = np.arange(past_length, past_length + length)
                filled[name] = np.broadcast_to(positions, (batch, length)).astype(_dtype(self.inputs[name]))
            else:
                filled[name] = self.pasts[name].empty(batch, self.head_size, self.window)
        return filled

    def _given_past_length(self, arrays: dict) -> int:
        for name, past in self.pasts.items():
            if name in arrays and "positions" in past.dims:
                return int(np.shape(arrays[name])[past.dims.index("positions")])
        return 0


def decoder_inputs(model: onnx.ModelProto, folder: Path | None = None, output=None) -> DecoderInputs:
    """The decoder conventions of `model` (read from any model: a classifier simply has no past)."""
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    inputs = {v.name: v for v in graph.input if v.name not in constants}
    genai = _read_json(folder, "genai_config.json").get("model", {}) if folder else {}
    config = _read_json(folder, "config.json") if folder else {}
    spec = DecoderInputs(inputs=inputs, tokens=_token_input(inputs), head_size=_head_size(genai, config),
                         window=_window(genai, model), logits=_logits_output(graph, output),
                         eos_token_ids=eos_token_ids(folder) if folder else [])
    if spec.tokens is not None:
        dims = inputs[spec.tokens].type.tensor_type.shape.dim
        if len(dims) == 2 and dims[1].HasField("dim_value"):
            spec.fixed_length = dims[1].dim_value
    outputs = {o.name for o in graph.output}
    axes = _position_axes(graph)
    for name, value in inputs.items():
        if not name.startswith("past") or value.type.tensor_type.elem_type not in _FLOATS:
            continue
        dims = _past_dims(value, axes.get(name))
        spec.pasts[name] = Past(name, dims, _dtype(value), _present(name, outputs))
    return spec


_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def _rank(value: onnx.ValueInfoProto) -> int:
    return len(value.type.tensor_type.shape.dim)


def _dtype(value: onnx.ValueInfoProto) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))


def _token_input(inputs: dict) -> str | None:
    """input_ids, or else the one integer input of rank 2 that is neither the mask nor the positions."""
    if "input_ids" in inputs:
        return "input_ids"
    candidates = [name for name, v in inputs.items() if name not in (MASK, POSITIONS) and _rank(v) == 2
                  and v.type.tensor_type.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)]
    return candidates[0] if len(candidates) == 1 else None


def _logits_output(graph, output) -> str | None:
    names = [o.name for o in graph.output]
    if isinstance(output, str):
        return output if output in names else None
    if isinstance(output, int):
        return names[output] if -len(names) <= output < len(names) else None
    if "logits" in names:
        return "logits"
    return next((o.name for o in graph.output if o.type.tensor_type.elem_type in _FLOATS
                 and len(o.type.tensor_type.shape.dim) == 3), None)


def _position_axes(graph) -> dict[str, int]:
    """Past input -> the axis its positions run along: the axis of the Concat that appends the new keys or
    values to it; the past of GroupQueryAttention, MultiHeadAttention and ONNX Attention is [batch, heads,
    positions, head] (axis 2), that of com.microsoft Attention [2, batch, heads, positions, head] (axis 3)."""
    axes = {}
    for node in graph.node:
        if node.op_type == "Concat":
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            for name in node.input:
                axes.setdefault(name, axis)
        elif node.op_type in ("GroupQueryAttention", "MultiHeadAttention", "Attention"):
            axis = 3 if node.op_type == "Attention" and node.domain == "com.microsoft" else 2   # its past: [2, B, N, P, H]
            for name in node.input:
                axes.setdefault(name, axis)
    return axes


def _past_dims(value: onnx.ValueInfoProto, axis: int | None) -> list:
    dims = list(value.type.tensor_type.shape.dim)
    words = [d.dim_param.lower() if d.HasField("dim_param") else "" for d in dims]
    if axis is None:   # no Concat nor attention node reads it: the dim named like a length
        axis = next((k for k, w in enumerate(words) if any(s in w for s in ("sliding", "seq", "len", "past"))),
                    2 if len(dims) == 4 else None)
    result = []
    for k, (dim, word) in enumerate(zip(dims, words)):
        if k == (axis % len(dims) if axis is not None else None):
            result.append("window" if "sliding" in word else "positions")
        elif dim.HasField("dim_value"):
            result.append(dim.dim_value)
        elif "batch" in word or k == 0:
            result.append("batch")
        else:
            result.append("head")
    return result


def _present(past: str, outputs: set) -> str | None:
    """past_key_values.0.key -> present.0.key (optimum, genai), past.0.key -> present.0.key, ..."""
    for prefix in ("past_key_values", "past"):
        if past.startswith(prefix):
            rest = past[len(prefix):]
            for candidate in ("present" + rest, "present_key_values" + rest):
                if candidate in outputs:
                    return candidate
    return None


def _read_json(folder: Path, name: str) -> dict:
    path = folder / name
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ModelLoadError(f"'{path}' is not readable JSON") from None
    return data if isinstance(data, dict) else {}


def _head_size(genai: dict, config: dict) -> int | None:
    decoder = genai.get("decoder", {})
    if isinstance(decoder.get("head_size"), int):
        return decoder["head_size"]
    config = config.get("text_config", config)   # multimodal configs keep the decoder's apart
    if isinstance(config.get("head_dim"), int):
        return config["head_dim"]
    for width, heads in (("hidden_size", "num_attention_heads"), ("n_embd", "n_head")):
        if isinstance(config.get(width), int) and isinstance(config.get(heads), int) and config[heads]:
            return config[width] // config[heads]
    return None


def _window(genai: dict, model: onnx.ModelProto) -> int | None:
    sliding = genai.get("decoder", {}).get("sliding_window") or {}
    if isinstance(sliding.get("window_size"), int):
        return sliding["window_size"]
    for node in model.graph.node:     # GroupQueryAttention's local_window_size
        for attribute in node.attribute:
            if attribute.name == "local_window_size" and attribute.i > 0:
                return int(attribute.i)
    return None


def eos_token_ids(folder: Path) -> list[int]:
    """The end-of-sequence ids of the model in `folder`: generation_config.json's, else config.json's, else
    genai_config.json's (an int or a list in each)."""
    for name, read in (("generation_config.json", lambda d: d), ("config.json", lambda d: d),
                       ("genai_config.json", lambda d: d.get("model", {}))):
        value = read(_read_json(folder, name)).get("eos_token_id")
        ids = [value] if isinstance(value, int) else value
        if isinstance(ids, list) and ids and all(isinstance(i, int) for i in ids):
            return ids
    return []


def model_file(path: str | Path) -> Path:
    """An .onnx file as it is; a folder (onnxruntime-genai's, optimum's, an HF folder with an onnx/ folder):
    its model.onnx, else its one .onnx file."""
    path = Path(path)
    if not path.is_dir():
        return path
    for folder in (path, path / "onnx"):
        if (folder / "model.onnx").is_file():
            return folder / "model.onnx"
        models = sorted(folder.glob("*.onnx")) if folder.is_dir() else []
        if len(models) == 1:
            return models[0]
        if len(models) > 1:
            raise ModelLoadError(f"'{folder}' holds several models ({', '.join(m.name for m in models)}): "
                                 "give the path of one")
    raise ModelLoadError(f"'{path}' is a folder without an .onnx model (model.onnx)")


def tokenizer_beside(model_path: str | Path) -> Path | None:
    """The tokenizer.json in the model's folder (or in the folder above an onnx/ folder)."""
    folder = Path(model_path).parent
    for candidate in (folder / "tokenizer.json", folder.parent / "tokenizer.json" if folder.name == "onnx" else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def token_texts(tokenizer, ids) -> list[str]:
    """Each token as it reads in the decoded text (with its leading space, say), special tokens kept: the
    decoded text of ids[:k+1] after that of ids[:k]. A token that ends inside a UTF-8 character (byte-level
    vocabularies split "ß" in two) reads as "", and the token that completes the character takes all of it;
    the texts put together are the decoded text."""
    ids = [int(i) for i in ids]
    texts, stable = [], ""
    for k in range(len(ids)):
        now = tokenizer.decode(ids[:k + 1], skip_special_tokens=False)
        if now.endswith("\ufffd") and k + 1 < len(ids):     # half a character so far
            texts.append("")
            continue
        texts.append(now[len(stable):] if now.startswith(stable) else tokenizer.decode([ids[k]],
                                                                                       skip_special_tokens=False))
        stable = now
    return texts
