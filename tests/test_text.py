"""onnxlrp explain --text / --texts with a HuggingFace tokenizer.json (the [text] extra)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxlrp import Explainer
from onnxlrp.cli import main

tokenizers = pytest.importorskip("tokenizers")

WORDS = ["[UNK]", "the", "film", "was", "a", "delight", "dull", "plot"]


@pytest.fixture
def tokenizer_file(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return path


@pytest.fixture
def text_model(tmp_path, rng):
    """Embeddings, a masked mean over tokens, a dense layer: [batch, 2] logits."""
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
    for name, value in {"table": rng.normal(size=(len(WORDS), 4)).astype(np.float32),
                        "w": rng.normal(size=(4, 2)).astype(np.float32),
                        "minus_one": np.array([-1], np.int64), "one": np.array([1], np.int64)}.items():
        model.graph.initializer.append(numpy_helper.from_array(value, name))
    path = tmp_path / "text.onnx"
    onnx.save(model, path)
    return path


def test_explain_text_writes_tokens_html_json_and_npy(text_model, tokenizer_file, tmp_path):
    out = tmp_path / "heat"
    code = main(["explain", str(text_model), "--text", "the film was a delight", "--tokenizer", str(tokenizer_file),
                 "--composite", "attn_lrp", "--out", str(out), "--target", "1"])
    assert code == 0
    table = json.loads((out / "text.tokens.json").read_text())
    assert [t["token"] for t in table["tokens"]] == ["the", "film", "was", "a", "delight"]
    relevance = np.load(out / "text.relevance.npy")
    ids = np.array([[WORDS.index(w) for w in "the film was a delight".split()]])
    expected = Explainer(str(text_model), composite="attn_lrp").explain(
        {"input_ids": ids, "attention_mask": np.ones_like(ids)}, target=1).relevance[0]
    np.testing.assert_allclose(relevance, expected, rtol=1e-6)
    np.testing.assert_allclose([t["relevance"] for t in table["tokens"]], expected, rtol=1e-6)
    page = (out / "text.tokens.html").read_text()
    assert "delight" in page and "http" not in page   # self-contained


def test_a_file_of_texts_is_resumable(text_model, tokenizer_file, tmp_path):
    texts = tmp_path / "reviews.txt"
    texts.write_text("the film was a delight\n\nthe plot was dull\n")
    out = tmp_path / "heat"
    args = ["explain", str(text_model), "--texts", str(texts), "--tokenizer", str(tokenizer_file),
            "--composite", "cp_lrp", "--out", str(out)]
    assert main(args) == 0
    assert sorted(p.name for p in out.glob("*.tokens.json")) == ["reviews-0001.tokens.json", "reviews-0003.tokens.json"]
    before = (out / "reviews-0001.tokens.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "reviews-0001.tokens.json").stat().st_mtime_ns == before


def test_text_needs_a_tokenizer(text_model, tmp_path, capsys):
    assert main(["explain", str(text_model), "--text", "the film", "--composite", "attn_lrp",
                 "--out", str(tmp_path)]) == 2
    assert "--tokenizer" in capsys.readouterr().err
