"""A tiny text model over token ids and its WordLevel tokenizer.json, for the text and serve tests:
embeddings, a masked sum over the tokens, Tanh, a dense layer to two classes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

WORDS = ["[UNK]", "the", "film", "was", "a", "delight", "dull", "plot", "and", "not"]


def write_text_model(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """(model.onnx, tokenizer.json) in `folder`. Needs the tokenizers library."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (int64[N, S] input_ids, int64[N, S] attention_mask) => (float[N, 2] logits) {
        e = Gather(table, input_ids)
        m = Cast<to = 1>(attention_mask)
        mu = Unsqueeze(m, minus_one)
        masked = Mul(e, mu)
        total = ReduceSum<keepdims = 0>(masked, one)
        h = Tanh(total)
        logits = MatMul(h, w)
    }""")
    rng = np.random.default_rng(seed)
    for name, value in {"table": rng.normal(size=(len(WORDS), 4)).astype(np.float32),
                        "w": rng.normal(size=(4, 2)).astype(np.float32),
                        "minus_one": np.array([-1], np.int64), "one": np.array([1], np.int64)}.items():
        model.graph.initializer.append(numpy_helper.from_array(value, name))
    onnx.save(model, folder / "sentiment.onnx")
    return folder / "sentiment.onnx", folder / "tokenizer.json"
