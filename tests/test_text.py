"""onnxlrp explain --text / --texts with a HuggingFace tokenizer.json (the [text] extra)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from onnxlrp import Explainer
from onnxlrp.cli import main

tokenizers = pytest.importorskip("tokenizers")
from text_model import WORDS, write_text_model  # noqa: E402

@pytest.fixture
def written(tmp_path):
    return write_text_model(tmp_path)


@pytest.fixture
def tokenizer_file(written):
    return written[1]


@pytest.fixture
def text_model(written):
    return written[0]


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
