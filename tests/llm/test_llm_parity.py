"""onnxlrp explains the decoder LLM graphs that get served as LXT explains the HF model they come from, whichever
exporter wrote them (torch.onnx TorchScript, dynamo, dynamo at opset 23 with its fused Attention / RotaryEmbedding
/ RMSNormalization, optimum with a cache, onnxruntime-genai's builder with GroupQueryAttention and the simplified
norms); and with a non-empty past, what a cache lets one say exactly:

- the new tokens' relevance is the relevance of the same positions in the whole prompt explained without a
  cache: relevance flows back from the explained logit to a new token's embedding only along the new positions
  (the prefix's keys and values do not depend on the new tokens), through the same local rules (AttnLRP and
  CP-LRP alike);
- CP-LRP holds the attention probabilities constant, so cached keys get no relevance at all, and with the
  prefix's map to its keys and values linear (norms, gates and probabilities held, no biases) the cache gets
  exactly the prefix tokens' total: ids + cache sum to the logit, as the whole prompt does;
- cached rows no new query reads (outside Gemma3's sliding window, or the unused rows of its window-sized
  buffer) get none.

Fixtures come from tools/llm_fixtures.py (built on first use into $ONNXLRP_LLM_FIXTURES, exports whose tool is
missing are skipped); the LXT oracle runs once per (architecture, variant), ~7 s each."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

import llm_fixtures as F
from reference import rel_l2

from onnxlrp import Explainer

pytestmark = [pytest.mark.slow, pytest.mark.lxt]
EXPORTS = ("torchscript", "dynamo_static", "dynamo_dynamic", "dynamo_opset23", "optimum", "genai_fp32")
WITH_PAST = ("optimum", "genai_fp32")
VARIANTS = ("attn_lrp", "cp_lrp")
IDS = F.sample_ids(1, 10)   # <s> + 9 words: longer than Gemma3's window of 4; the static export's length
PREFIX = 7                  # with a past: tokens 7.. after the cache of tokens 0..6
BIAS_FREE = ("llama", "qwen3", "gemma3")   # Qwen2's q, k, v biases absorb relevance


def fixture(arch, way=None):
    try:
        return F.fixture(arch, way)
    except FileNotFoundError as missing:   # the exporter's environment is not installed here
        pytest.skip(str(missing))


@pytest.fixture(scope="module")
def lxt(tmp_path_factory):
    """LXT's relevance of IDS per (arch, variant), computed once."""
    pytest.importorskip("lxt")
    cache = {}

    def reference(arch, variant):
        if (arch, variant) not in cache:
            work = tmp_path_factory.mktemp(f"lxt_{arch}_{variant}")
            cache[arch, variant] = F.lxt_reference(fixture(arch), IDS, variant, work)
        return cache[arch, variant]
    return reference


@pytest.fixture(scope="module")
def whole_prompt():
    """onnxlrp's relevance of IDS without a cache (the TorchScript export), per (arch, variant), computed once."""
    cache = {}

    def explain(arch, variant, target):
        if (arch, variant, target) not in cache:
            path = fixture(arch, "torchscript")
            cache[arch, variant, target] = Explainer(path, composite=variant).explain(F.ort_feeds(path, IDS),
                                                                                     target=target)
        return cache[arch, variant, target]
    return explain


def ort_outputs(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_reproduces(explanation, path, feeds):
    """The explainer computes the model's outputs (logits and presents) as onnxruntime does on the original."""
    expected = ort_outputs(path, feeds)
    assert len(explanation.outputs) == len(expected)
    for got, want in zip(explanation.outputs, expected):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("way", EXPORTS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("arch", F.ARCHS)
def test_token_relevance_is_lxts(arch, variant, way, lxt):
    reference = lxt(arch, variant)
    path = fixture(arch, way)
    feeds = F.ort_feeds(path, IDS)
    explanation = Explainer(path, composite=variant).explain(feeds, target=int(reference["target"][0]))
    relevance = explanation.relevances["input_ids"]
    assert relevance.shape == IDS.shape
    assert rel_l2(relevance, reference["relevance"]) <= 1e-4
    assert_reproduces(explanation, path, feeds)
    for name, cached in explanation.relevances.items():   # an empty past carries nothing (Gemma3's zero buffer)
        if name.startswith("past_key_values"):
            assert not np.any(cached), name


@pytest.mark.parametrize("way", WITH_PAST)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("arch", F.ARCHS)
def test_a_past_is_explained_consistently_with_the_whole_prompt(arch, variant, way, whole_prompt):
    path = fixture(arch, way)
    feeds = F.ort_feeds_with_past(path, IDS[:, :PREFIX], IDS[:, PREFIX:])
    whole = whole_prompt(arch, variant, None)
    target = int(whole.target[0])
    explanation = Explainer(path, composite=variant).explain(feeds, target=target)
    assert_reproduces(explanation, path, feeds)
    assert np.allclose(explanation.outputs[0][:, -1], whole.outputs[0][:, -1], rtol=1e-5, atol=1e-5)

    new = explanation.relevances["input_ids"]
    cached = {name: r for name, r in explanation.relevances.items() if name.startswith("past_key_values")}
    assert cached and all(np.isfinite(r).all() for r in [new, *cached.values()])
    for name, r in cached.items():   # per cached row
        assert r.shape == (1, feeds[name].shape[2]), name
    scale = np.abs(whole.relevances["input_ids"]).sum()
    np.testing.assert_allclose(new, whole.relevances["input_ids"][:, PREFIX:], rtol=1e-4, atol=1e-5 * scale)

    keys = sum(np.abs(r).sum() for name, r in cached.items() if name.endswith(".key"))
    values = sum(np.abs(r).sum() for name, r in cached.items() if name.endswith(".value"))
    assert values > 1e-3 * scale
    if variant == "cp_lrp":
        assert keys == 0   # the probabilities are held constant
        if arch in BIAS_FREE:
            prefix_total = sum(r.sum() for r in cached.values())
            np.testing.assert_allclose(prefix_total, whole.relevances["input_ids"][0, :PREFIX].sum(),
                                       rtol=1e-4, atol=1e-5 * scale)
            logit = explanation.outputs[0][0, -1, target]
            np.testing.assert_allclose(new.sum() + prefix_total, logit, rtol=1e-4)
    else:
        assert keys > 1e-3 * scale
    if arch == "gemma3":   # the sliding layer's cache: queries 7..9 read positions 4.. (window 4)
        sliding = cached["past_key_values.0.key"] + cached["past_key_values.0.value"]
        positions = PREFIX - sliding.shape[1] + np.arange(sliding.shape[1])   # genai: a buffer of 4, optimum: 7
        assert not np.any(sliding[0, positions < PREFIX - 3]) and np.all(sliding[0, positions >= PREFIX - 3] != 0)
