"""Concept-conditional relevance (CRP) without a framework: properties on the bundled models."""
from __future__ import annotations

import numpy as np
import pytest

from pathlib import Path

from onnxlrp import Explainer
from onnxlrp.errors import OnnxLrpError

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture(scope="module")
def vgg():
    return Explainer(str(MODELS / "tiny_vgg.onnx"))


@pytest.fixture
def x(rng):
    return rng.normal(size=(2, 3, 32, 32)).astype(np.float32)


def test_per_channel_conditional_heatmaps_sum_to_the_unconditioned_one(vgg, x):
    """Every relevance path runs through conv_13 (no skip around it), and the masks of its channels
    partition them: their conditional heatmaps add up to the plain one."""
    plain = vgg.explain(x, target=1).relevance
    channels = vgg.compiled("logit", conditions=("conv_13",)).model.graph
    n_channels = next(i for i in channels.input if i.name.startswith("condition/")).type.tensor_type.shape.dim[1].dim_value
    several = vgg.explain(x, target=1, condition=[{"conv_13": [c]} for c in range(n_channels)])
    assert several.relevance.shape == (2, n_channels, 3, 32, 32)
    np.testing.assert_allclose(several.relevance.sum(axis=1), plain, rtol=1e-4, atol=1e-6)
    joint = vgg.explain(x, target=1, condition={"conv_13": [0, 3]}).relevance
    np.testing.assert_allclose(joint, several.relevance[:, 0] + several.relevance[:, 3], rtol=1e-4, atol=1e-6)


def test_concept_relevance_is_the_channel_share_of_the_layer(vgg, x):
    shares = vgg.concept_relevance(x, "conv_13", target=1)
    np.testing.assert_allclose(np.abs(shares).sum(1), 1.0, rtol=1e-5)   # zennit-crp's abs_norm
    channels, top = vgg.top_concepts(x, "conv_13", 3, target=1)
    assert channels.shape == (2, 3) and np.all(np.diff(top, axis=1) <= 0)
    np.testing.assert_allclose(top, np.take_along_axis(shares, channels, axis=1))
    # a layer's own condition applies after its concept relevance is read: the same shares with any mask
    several = vgg.explain(x, target=1, condition=[{"conv_13": [int(c)]} for c in channels[0]], concepts=["conv_13"])
    inner = several.concept_relevance["conv_13"]   # [2, 3, C]
    np.testing.assert_allclose(inner, np.repeat(shares[:, None], 3, axis=1), rtol=1e-5, atol=1e-7)
    # a condition above a layer shapes the concepts below it
    below = vgg.concept_relevance(x, "conv_3", target=1, condition={"conv_13": [int(channels[0, 0])]})
    assert not np.allclose(below, vgg.concept_relevance(x, "conv_3", target=1))


def test_conditions_on_a_resnet_do_not_bypass_the_mask(rng):
    ex = Explainer(str(MODELS / "tiny_resnet.onnx"))
    x = rng.normal(size=(1, 3, 32, 32)).astype(np.float32)
    # relu_16 sits inside a residual block whose skip bypasses it: with every channel kept, the skip's
    # relevance is still dropped, so the heatmap differs from the plain one
    compiled = ex.compiled("logit", conditions=("relu_16",))
    n_channels = next(i for i in compiled.model.graph.input
                      if i.name.startswith("condition/")).type.tensor_type.shape.dim[1].dim_value
    everything = ex.explain(x, target=0, condition={"relu_16": list(range(n_channels))}).relevance
    plain = ex.explain(x, target=0).relevance
    assert not np.allclose(everything, plain)
    several = ex.explain(x, target=0, condition=[{"relu_16": [c]} for c in range(n_channels)])
    np.testing.assert_allclose(several.relevance.sum(1)[0], everything[0], rtol=1e-4, atol=1e-6)


def test_unknown_layers_and_channels_are_clear_errors(vgg, x):
    with pytest.raises(OnnxLrpError, match="no layer or tensor 'nope'"):
        vgg.explain(x, condition={"nope": [0]})
    with pytest.raises(OnnxLrpError, match="channels"):
        vgg.explain(x, condition={"conv_13": [999]})
    with pytest.raises(OnnxLrpError, match="same layers"):
        vgg.explain(x, condition=[{"conv_13": [0]}, {"conv_3": [0]}])
