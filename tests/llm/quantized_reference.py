"""The float model a weight-only quantized export stands for: the HF folder it was built from, with every
quantized weight replaced by the weight onnxruntime itself multiplies by. LXT on that folder is the exact
reference for onnxlrp on the quantized graph (up to what the quantized op does to its activations:
accuracy_level 4 rounds them to int8 inside MatMulNBits).

onnxruntime gives the dequantized weights: MatMulNBits applied to the K x K identity is W^T (identity rows
survive int8 rounding exactly), GatherBlockQuantized of every id is the table."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def _run_alone(node: onnx.NodeProto, initializers: list[onnx.TensorProto], feeds: dict, opset: int) -> np.ndarray:
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT if value.dtype == np.float32 else TensorProto.INT64,
                                            list(value.shape)) for name, value in feeds.items()]
    graph = helper.make_graph([node], "alone", inputs, [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT,
                                                                                      None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def onnxruntime_weights(path: Path) -> dict[str, np.ndarray]:
    """Initialiser-name stem -> the float weight onnxruntime uses: [K, N] for MatMulNBits (x W), [vocab, hidden]
    for GatherBlockQuantized."""
    model = onnx.load(str(path))
    tensors = {t.name: t for t in model.graph.initializer}
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    weights = {}
    for node in model.graph.node:
        used = [tensors[name] for name in node.input[1:] if name in tensors]
        if node.op_type == "MatMulNBits":
            k = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "K")
            alone = helper.make_node("MatMulNBits", ["eye"] + list(node.input[1:]), ["w"], domain="com.microsoft")
            alone.attribute.extend(node.attribute)
            weights[node.input[1]] = _run_alone(alone, used, {"eye": np.eye(k, dtype=np.float32)}, opset)
        elif node.op_type == "GatherBlockQuantized":
            used = [tensors[name] for name in node.input if name in tensors]
            vocab = numpy_helper.to_array(tensors[node.input[0]]).shape[0]
            alone = helper.make_node("GatherBlockQuantized", [node.input[0], "ids"] + list(node.input[2:]), ["w"],
                                     domain="com.microsoft")
            alone.attribute.extend(node.attribute)
            weights[node.input[0]] = _run_alone(alone, used, {"ids": np.arange(vocab, dtype=np.int64)}, opset)
    return weights


def dequantized_hf_folder(quantized: Path, hf_folder: Path, out: Path) -> Path:
    """A copy of the HF folder whose linear layers (and embedding table, if quantized) carry the weights the
    quantized export multiplies by (onnxruntime-genai's names: model.layers.{i}.attn.qkv_proj.MatMul.weight_Q4,
    packed q, k, v rows; lm_head.MatMul.weight_Q4; model.embed_tokens.weight_Q4)."""
    import torch
    from safetensors.torch import load_file, save_file
    config = json.loads((hf_folder / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    q_rows, kv_rows = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    state = load_file(str(hf_folder / "model.safetensors"))
    replaced = 0
    for name, weight in onnxruntime_weights(quantized).items():
        stem = re.sub(r"\.MatMul\.weight_Q\d$|_Q\d$", "", name)
        if stem.endswith("embed_tokens.weight"):
            targets = {stem: weight}
        elif stem.endswith("attn.qkv_proj"):
            base = stem.replace(".attn.qkv_proj", ".self_attn.")
            rows = weight.T
            targets = {base + "q_proj.weight": rows[:q_rows], base + "k_proj.weight": rows[q_rows:q_rows + kv_rows],
                       base + "v_proj.weight": rows[q_rows + kv_rows:]}
        else:
            targets = {stem.replace(".attn.", ".self_attn.") + ".weight": weight.T}
        for key, value in targets.items():
            if key not in state:
                if key == "lm_head.weight" and config.get("tie_word_embeddings"):
                    continue
                raise KeyError(f"{name}: no HF weight {key}")
            assert state[key].shape == value.shape, (key, state[key].shape, value.shape)
            state[key] = torch.as_tensor(np.ascontiguousarray(value), dtype=state[key].dtype)
            replaced += 1
    out.mkdir(parents=True, exist_ok=True)
    for item in hf_folder.iterdir():
        if item.name != "model.safetensors":
            shutil.copy(item, out / item.name)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    assert replaced, f"{quantized} has no quantized weight"
    return out
