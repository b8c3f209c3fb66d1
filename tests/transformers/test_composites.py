"""AttnLRP / CP-LRP as composites: the block kinds reachable from LayerMap, rules checked per kind, starts."""
from __future__ import annotations

import numpy as np
import pytest

from onnxlrp import Explainer, composites, rules
from onnxlrp.errors import OnnxLrpError
from test_blocks import ATTENTION, BILINEAR, EMBEDDING, _attention_weights, _model


def test_layer_map_on_the_block_kinds_turns_attn_lrp_into_cp_lrp(rng):
    model = _model(ATTENTION, **_attention_weights(rng))
    x = rng.normal(size=(2, 4, 3)).astype(np.float32)
    cp = Explainer(model, composite="cp_lrp").explain(x, target=4).relevance
    mapped = composites.LayerMap([("softmax", rules.Constant())], base=composites.AttnLRP())
    np.testing.assert_allclose(Explainer(model, composite=mapped).explain(x, target=4).relevance, cp, rtol=1e-6)
    attn = Explainer(model, composite="attn_lrp").explain(x, target=4).relevance
    assert not np.allclose(attn, cp)


def test_uniform_share_is_data(rng):
    w1, w2 = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    model = _model(BILINEAR, w1=w1, w2=w2)
    x = rng.normal(size=(2, 3)).astype(np.float32)
    half = Explainer(model, composite="attn_lrp").explain(x, target=0).relevance
    whole = Explainer(model, composite=composites.LayerMap([("bilinear", rules.UniformShare(share=1.0))],
                                                           base=composites.AttnLRP())).explain(x, target=0).relevance
    np.testing.assert_allclose(whole, 2 * half, rtol=1e-6)   # the product rule's full gradient


def test_a_rule_a_kind_does_not_take_is_a_clear_error(rng):
    model = _model(ATTENTION, **_attention_weights(rng))
    composite = composites.LayerMap([("softmax", rules.ZPlus())], base=composites.AttnLRP())
    with pytest.raises(OnnxLrpError, match="'softmax' block.*rules.Norm().*rules.Constant()"):
        Explainer(model, composite=composite).compiled()


def test_inspect_lists_every_block_with_its_rule(rng):
    compiled = Explainer(_model(ATTENTION, **_attention_weights(rng)), composite="cp_lrp").compiled()
    kinds = {rule.split(":")[0] for _, _, rule in compiled.layer_rules}
    assert kinds == {"dense", "bilinear", "softmax"}
    assert any("softmax: Constant()" in rule for _, _, rule in compiled.layer_rules)


def test_mean_contrast_start_explains_the_target_against_the_mean_of_the_others(rng):
    table, w = rng.normal(size=(7, 3)).astype(np.float32), rng.normal(size=(3, 2)).astype(np.float32)
    w = np.concatenate([w, rng.normal(size=(3, 2)).astype(np.float32)], axis=1)   # 4 classes
    model = _model(EMBEDDING.replace("float[N, 2] y", "float[N, 4] y"), table=table, w=w)
    ids = rng.integers(0, 7, size=(2, 5))
    ex = Explainer(model, composite="attn_lrp")
    res = ex.explain({"ids": ids}, target=1, mode="mean_contrast")
    logits = res.outputs[0]
    expected = logits[:, 1] - (logits.sum(1) - logits[:, 1]) / 3   # linear, bias-free: conserved exactly
    np.testing.assert_allclose(res.relevance.sum(1), expected, rtol=1e-5)


def test_top_k_and_several_targets_per_sample(rng):
    table, w = rng.normal(size=(7, 3)).astype(np.float32), rng.normal(size=(3, 2)).astype(np.float32)
    model = _model(EMBEDDING, table=table, w=w)
    ids = rng.integers(0, 7, size=(3, 5))
    ex = Explainer(model, composite="attn_lrp")
    top = ex.explain({"ids": ids}, top_k=2)
    assert top.relevance.shape == (3, 2, 5)
    for k in range(2):
        single = ex.explain({"ids": ids}, target=top.target[:, k]).relevance
        np.testing.assert_allclose(top.relevance[:, k], single, rtol=1e-6)


def test_inspect_on_the_command_line(rng, tmp_path, capsys):
    import onnx
    from onnxlrp.cli import main
    path = tmp_path / "attention.onnx"
    onnx.save(_model(ATTENTION, **_attention_weights(rng)), path)
    assert main(["inspect", str(path), "--composite", "attn_lrp"]) == 0
    out = capsys.readouterr().out
    assert "softmax: Norm(" in out and "bilinear: UniformShare(share=0.5)" in out and "supported" in out


def test_conditions_on_hidden_units_of_a_transformer_layer(rng):
    """CRP on a [batch, seq, hidden] tensor conditions its last axis; under CP-LRP every relevance path
    runs through the values, so the per-unit conditional heatmaps of v add up to the plain one."""
    model = _model(ATTENTION, **_attention_weights(rng))
    x = rng.normal(size=(2, 4, 3)).astype(np.float32)
    ex = Explainer(model, composite="cp_lrp")
    plain = ex.explain(x, target=7).relevance
    several = ex.explain(x, target=7, condition=[{"v": [c]} for c in range(3)])
    assert several.relevance.shape == (2, 3, 4, 3)
    np.testing.assert_allclose(several.relevance.sum(1), plain, rtol=1e-5, atol=1e-7)
    shares = ex.concept_relevance(x, "v", target=7)
    assert shares.shape == (2, 3)
