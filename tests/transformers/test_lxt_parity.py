"""AttnLRP and CP-LRP against LXT 2.1 (efficient mode, float64, each reference in a process of its own) on
tiny BERT, GPT-2 and ViT models, each exported four ways (docs/rules.md: relative L2 <= 1e-4)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("lxt")
pytest.importorskip("onnxscript")   # the dynamo exporter

import tiny_transformers as T  # noqa: E402
from onnxlrp import Explainer  # noqa: E402

pytestmark = [pytest.mark.lxt]
ORACLE = Path(__file__).resolve().parent / "lxt_oracle.py"
CASES = [("bert", "attn_lrp"), ("gpt2", "attn_lrp"), ("gpt2", "cp_lrp"), ("vit", "attn_lrp"), ("vit", "cp_lrp")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("lxt")


@pytest.fixture(scope="module")
def models():
    return {kind: T.make_model(kind) for kind in T.KINDS}


@pytest.fixture(scope="module")
def exported(models, workdir):
    cache = {}

    def get(kind, way):
        if (kind, way) not in cache:
            cache[kind, way] = T.export(models[kind], kind, way, workdir / f"{kind}_{way}.onnx")
        return cache[kind, way]
    return get


def _inputs(kind):
    return T.sample_inputs(kind, padded=kind == "bert")   # BERT: one padded sample, one not


def _explain(path, kind, variant, memory="default"):
    ex = Explainer(str(path), composite=variant, memory=memory)
    inputs = _inputs(kind)
    return ex.explain(inputs if kind != "vit" else inputs["pixel_values"],
                      **({"position": -1} if kind == "gpt2" else {}))


@pytest.fixture(scope="module")
def reference(models, workdir):
    cache = {}

    def get(kind, variant, target, position):
        key = (kind, variant, tuple(np.ravel(target)), None if position is None else tuple(np.ravel(position)))
        if key not in cache:
            case = T.lxt_case(models[kind], kind, variant, _inputs(kind), target, position, workdir)
            out = workdir / f"{kind}_{variant}_lxt.npz"
            subprocess.run([sys.executable, str(ORACLE), str(case), str(out)], check=True, timeout=300,
                           capture_output=True)
            cache[key] = np.load(out)
        return cache[key]
    return get


def _relative_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# the bounded-memory form recomputes the forward in the relevance pass, per head: on exports it was not built on
# (an encoder with padding, ViT, onnxruntime's fused attention) it must give LXT's numbers too
@pytest.mark.parametrize("memory", ["default", "low"])
@pytest.mark.parametrize("way", T.EXPORTS)
@pytest.mark.parametrize("kind,variant", CASES)
def test_equals_lxt(kind, variant, way, memory, exported, reference):
    if way == "dynamo":
        pytest.importorskip("onnxscript")
    res = _explain(exported(kind, way), kind, variant, memory)
    ref = reference(kind, variant, res.target, res.position)
    expected_logits = ref["logits"]
    np.testing.assert_allclose(res.outputs[0], expected_logits, rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(res.relevance))
    assert _relative_l2(res.relevance, ref["relevance"]) <= 1e-4
    if kind != "vit":
        assert res.relevance.shape == _inputs(kind)["input_ids"].shape


@pytest.mark.parametrize("kind,variant", [("bert", "attn_lrp"), ("gpt2", "cp_lrp")])
def test_every_export_gives_the_same_relevance(kind, variant, exported):
    results = [_explain(exported(kind, way), kind, variant).relevance for way in T.EXPORTS]
    for other in results[1:]:
        assert _relative_l2(other, results[0]) <= 1e-5


def test_cp_lrp_conserves_on_a_bias_free_model(workdir):
    """Without biases, position embeddings and LayerNorm shifts, CP-LRP is conservative: the token
    relevance sums to the explained logit."""
    import torch
    model = T.make_model("gpt2")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "wpe" in name:
                param.zero_()
    path = T.export(model, "gpt2", "torchscript17", workdir / "gpt2_bias_free.onnx")
    res = Explainer(str(path), composite="cp_lrp").explain(T.sample_inputs("gpt2"), position=-1)
    logits = res.outputs[0][np.arange(2), res.position, res.target]
    np.testing.assert_allclose(res.relevance.sum(axis=1), logits, rtol=1e-4)


@pytest.mark.parametrize("variant", ["attn_lrp", "cp_lrp"])
def test_vit_gamma_recipe_equals_lxt_with_zennit(variant, models, exported, workdir):
    """LXT's ViT recipe: Zennit's Gamma on the patch embedding and on every linear layer, in gradient form."""
    stub = str(Path(__file__).resolve().parent.parent / "zennit_stub")   # zennit imports torchvision
    if stub not in sys.path:
        sys.path.insert(0, stub)
    pytest.importorskip("zennit")
    from onnxlrp import composites, rules
    composite = {"attn_lrp": composites.AttnLRP, "cp_lrp": composites.CPLRP}[variant](
        linear=rules.Gamma(gamma=0.05), conv=rules.Gamma(gamma=0.5))
    inputs = _inputs("vit")
    res = Explainer(str(exported("vit", "torchscript17")), composite=composite).explain(inputs["pixel_values"])
    case = T.lxt_case(models["vit"], "vit", variant, inputs, res.target, None, workdir, linear_gamma=0.05,
                      conv_gamma=0.5)
    out = workdir / f"vit_{variant}_gamma_lxt.npz"
    subprocess.run([sys.executable, str(ORACLE), str(case), str(out)], check=True, timeout=300, capture_output=True)
    assert _relative_l2(res.relevance, np.load(out)["relevance"]) <= 1e-4
