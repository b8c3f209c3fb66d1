"""A tiny decoder language model written op by op (one attention layer of 2 heads, a ReLU MLP, an LM head;
random weights), in the input conventions of the exporters, for the generation tests:

    "plain":   input_ids, attention_mask -> logits (torch.onnx without a cache)
    "optimum": input_ids, attention_mask [batch, past + sequence], position_ids, past_key_values.0.key/.value
               [batch, 2, past_sequence_length, 4] -> logits, present.0.key/.value (text-generation-with-past)
    "genai":   as optimum without position_ids (positions after the past), the head size left free
               (kv_cache_dim) and told by genai_config.json

and a word-level tokenizer.json beside it. Needs only onnx (the tokenizer: the tokenizers library)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WORDS = ["<unk>", "<s>", "</s>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "home", "and", "then"]
VOCAB, WIDTH, HEADS, HEAD, CONTEXT = len(WORDS), 8, 2, 4, 64
EOS = 2


def decoder(style: str = "optimum", seed: int = 7, fixed_length: int | None = None) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, constants = [], {}

    def const(name, value):
        constants[name] = numpy_helper.from_array(np.asarray(value), name)
        return name

    def op(kind, inputs, output, **attrs):
        nodes.append(helper.make_node(kind, inputs, [output], **attrs))
        return output

    weight = lambda *shape: (rng.normal(size=shape) * 0.6).astype(np.float32)   # noqa: E731
    cache = style in ("optimum", "genai")
    # positions: optimum's position_ids; genai's from the mask (past length = mask length - sequence); plain 0..S-1
    op("Shape", ["input_ids"], "S1", start=1, end=2)
    if cache:
        op("Shape", ["past_key_values.0.key"], "P1", start=2, end=3)
    else:
        const("P1", np.array([0], np.int64))
    op("Add", ["P1", "S1"], "T1")
    op("Squeeze", ["P1", const("axis0", np.array([0], np.int64))], "P")
    op("Squeeze", ["T1", "axis0"], "T")
    const("zero", np.array(0, np.int64))
    const("one", np.array(1, np.int64))
    op("Range", ["P", "T", "one"], "rows")
    op("Range", ["zero", "T", "one"], "cols")
    positions = "position_ids" if style == "optimum" else op("Unsqueeze", ["rows", "axis0"], "positions")
    op("Gather", [const("embed", weight(VOCAB, WIDTH) * 2), "input_ids"], "tok")
    op("Gather", [const("pos_embed", weight(CONTEXT, WIDTH)), positions], "pos")
    op("Add", ["tok", "pos"], "x")
    split = const("heads_shape", np.array([0, 0, HEADS, HEAD], np.int64))
    for name in "qkv":
        op("MatMul", ["x", const(f"w{name}", weight(WIDTH, WIDTH))], f"{name}_flat")
        op("Reshape", [f"{name}_flat", split], f"{name}_split")
        op("Transpose", [f"{name}_split"], f"{name}_new" if name != "q" else "q", perm=[0, 2, 1, 3])
    if cache:
        op("Concat", ["past_key_values.0.key", "k_new"], "present.0.key", axis=2)
        op("Concat", ["past_key_values.0.value", "v_new"], "present.0.value", axis=2)
        keys, values = "present.0.key", "present.0.value"
    else:
        keys, values = "k_new", "v_new"
    op("Transpose", [keys], "k_t", perm=[0, 1, 3, 2])
    op("MatMul", ["q", "k_t"], "scores")
    op("Mul", ["scores", const("scale", np.array(HEAD ** -0.5, np.float32))], "scaled")
    # causal: key j is seen from query i (at position P + i) when j <= P + i; padding: mask 0 hides a key
    op("Unsqueeze", ["cols", "axis0"], "cols_row")
    op("Unsqueeze", ["rows", const("axis1", np.array([1], np.int64))], "rows_col")
    op("LessOrEqual", ["cols_row", "rows_col"], "allowed")
    op("Where", ["allowed", const("open", np.array(0, np.float32)), const("shut", np.array(-1e9, np.float32))],
       "causal")
    op("Cast", ["attention_mask"], "mask_float", to=TensorProto.FLOAT)
    op("Sub", [const("unit", np.array(1, np.float32)), "mask_float"], "hidden")
    op("Mul", ["hidden", "shut"], "padding")
    op("Unsqueeze", ["padding", const("axes12", np.array([1, 2], np.int64))], "padding4")
    op("Add", ["scaled", "causal"], "scores_causal")
    op("Add", ["scores_causal", "padding4"], "scores_masked")
    op("Softmax", ["scores_masked"], "attention", axis=-1)
    op("MatMul", ["attention", values], "context")
    op("Transpose", ["context"], "context_t", perm=[0, 2, 1, 3])
    op("Reshape", ["context_t", const("merge", np.array([0, 0, WIDTH], np.int64))], "context_flat")
    op("MatMul", ["context_flat", const("wo", weight(WIDTH, WIDTH))], "attended")
    op("Add", ["x", "attended"], "h")
    op("MatMul", ["h", const("w1", weight(WIDTH, 2 * WIDTH))], "up")
    op("Add", ["up", const("b1", weight(2 * WIDTH) * 0.2)], "up_b")
    op("Relu", ["up_b"], "up_r")
    op("MatMul", ["up_r", const("w2", weight(2 * WIDTH, WIDTH))], "down")
    op("Add", ["h", "down"], "h2")
    op("MatMul", ["h2", const("lm_head", weight(WIDTH, VOCAB))], "logits")

    length = fixed_length or "sequence"
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", length]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                            ["batch", "total" if cache else length])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", length, VOCAB])]
    if style == "optimum":
        inputs.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", length]))
    if cache:
        head = HEAD if style == "optimum" else "kv_cache_dim"
        for part in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.0.{part}", TensorProto.FLOAT,
                                                        ["batch", HEADS, "past_sequence_length", head]))
            outputs.append(helper.make_tensor_value_info(f"present.0.{part}", TensorProto.FLOAT,
                                                         ["batch", HEADS, "total", head]))
    graph = helper.make_graph(nodes, f"decoder_{style}", inputs, outputs, initializer=list(constants.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def write_decoder(folder: Path, style: str = "optimum", seed: int = 7, tokenizer: bool = True,
                  fixed_length: int | None = None) -> Path:
    """folder/model.onnx, its tokenizer.json, and the config files its style comes with; returns the model."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(decoder(style, seed, fixed_length), folder / "model.onnx")
    if style == "genai":
        (folder / "genai_config.json").write_text(json.dumps({"model": {
            "eos_token_id": EOS, "decoder": {"head_size": HEAD, "num_key_value_heads": HEADS}}}))
    else:
        (folder / "config.json").write_text(json.dumps({"eos_token_id": EOS, "hidden_size": WIDTH,
                                                        "num_attention_heads": HEADS}))
    if tokenizer:
        write_tokenizer(folder)
    return folder / "model.onnx"


def write_tokenizer(folder: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(WORDS[:3])
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"
