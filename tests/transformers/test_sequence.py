"""Sequence outputs [batch, seq, vocab]: one token at one position per sample (position=, target=)."""
from __future__ import annotations

import numpy as np
import pytest

from onnxlrp import Explainer
from onnxlrp.errors import OnnxLrpError
from test_blocks import _model

# a causal "LM" without attention: the logits at position t depend on token t alone
LM = """g (int64[N, S] ids) => (float[N, S, 6] logits) {
    e = Gather(table, ids)
    logits = MatMul(e, w)
}"""


@pytest.fixture
def lm(rng):
    table, w = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(4, 6)).astype(np.float32)
    return _model(LM, table=table, w=w), table, w


def test_default_is_the_predicted_next_token_at_the_last_position(lm, rng):
    model, table, w = lm
    ids = rng.integers(0, 6, size=(2, 5))
    res = Explainer(model, composite="attn_lrp").explain({"ids": ids})
    logits = res.outputs[0]
    np.testing.assert_array_equal(res.position, [4, 4])
    np.testing.assert_array_equal(res.target, logits[:, 4].argmax(1))
    expected = np.zeros((2, 5))
    expected[:, 4] = logits[np.arange(2), 4, res.target]    # linear and bias-free: all of it on token 4
    np.testing.assert_allclose(res.relevance, expected, rtol=1e-5, atol=1e-7)


def test_per_sample_positions_and_targets(lm, rng):
    model, _, _ = lm
    ids = rng.integers(0, 6, size=(3, 5))
    ex = Explainer(model, composite="cp_lrp")
    res = ex.explain({"ids": ids}, target=[1, 2, -1], position=[0, -2, 2])
    np.testing.assert_array_equal(res.position, [0, 3, 2])
    assert res.target[0] == 1 and res.target[1] == 2 and res.target[2] == res.outputs[0][2, 2].argmax()
    for i, p in enumerate(res.position):
        assert np.count_nonzero(res.relevance[i]) == 1 and res.relevance[i, p] != 0
    top = ex.explain({"ids": ids}, top_k=2, position=1)
    assert top.relevance.shape == (3, 2, 5)
    np.testing.assert_array_equal(top.target, np.argsort(-top.outputs[0][:, 1], axis=1)[:, :2])


def test_embedding_level_relevance_and_bad_positions(lm, rng):
    model, table, _ = lm
    ids = rng.integers(0, 6, size=(2, 5))
    ex = Explainer(model, composite="attn_lrp", layer_relevances=True)
    res = ex.explain({"ids": ids}, position=2)
    (embedding,) = [v for k, v in res.layer_relevances.items() if k.startswith("lrp_relevance/input/")]
    assert embedding.shape == (2, 5, 4)
    np.testing.assert_allclose(embedding.sum(-1), res.relevance, rtol=1e-6)
    with pytest.raises(OnnxLrpError, match="position"):
        ex.explain({"ids": ids}, position=5)
