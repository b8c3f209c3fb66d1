"""CRP against zennit-crp (CondAttribution, exclude_parallel=True; ChannelConcept) on a ResNet-style
torch model, where a residual skip bypasses the conditioned layer (skipped without torch, zennit and
zennit-crp: `pip install --no-deps zennit-crp`)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
parity = pytest.importorskip("test_zennit_parity")   # its models, exporter and the zennit stand-in
crp = pytest.importorskip("crp.attribution")
from crp.concepts import ChannelConcept  # noqa: E402

import zennit.composites as zc  # noqa: E402
from zennit.canonizers import SequentialMergeBatchNorm  # noqa: E402

from onnxlrp import Explainer, composites  # noqa: E402

pytestmark = pytest.mark.zennit


@pytest.fixture(scope="module")
def resnet():
    exported, with_sum, shape = parity.MODELS["resnet"]
    x = torch.randn((2,) + shape, generator=torch.Generator().manual_seed(11))
    return exported, with_sum, x, Explainer(parity._export(exported, x), composite=composites.EpsilonPlusFlat())


def _reference(model, x, conditions, layers):
    model = parity.copy.deepcopy(model).double()
    attribution = crp.CondAttribution(model, no_param_grad=True)
    composite = zc.EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
    data = x.double().clone().requires_grad_()
    result = attribution(data, conditions, composite, record_layer=layers)
    return data.grad.detach().numpy(), {k: v.detach().numpy() for k, v in result.relevances.items()}


@pytest.mark.parametrize("layer,channels", [("layer1.conv2", [3]), ("layer2.conv1", [0, 7, 9])])
def test_conditional_heatmap_equals_zennit_crp(resnet, layer, channels):
    exported, with_sum, x, ex = resnet
    target = [1, 4]
    conditions = [{"y": [t], layer: channels} for t in target]
    # zennit-crp conditions each sample on its own dict: one sample per call
    want = np.concatenate([_reference(with_sum, x[i:i + 1], conditions[i:i + 1], [layer])[0] for i in range(2)])
    node = "/" + layer.replace(".", "/") + "/Conv"
    got = ex.explain(x.numpy(), target=target, condition={node: channels}).relevance
    assert float(np.linalg.norm(got - want) / np.linalg.norm(want)) < 1e-4


def test_concept_relevance_equals_zennit_crp(resnet):
    exported, with_sum, x, ex = resnet
    layer = "layer2.conv2"
    _, relevances = _reference(with_sum, x[:1], [{"y": [2]}], [layer])
    want = ChannelConcept().attribute(torch.as_tensor(relevances[layer]), abs_norm=True).numpy()
    got = ex.concept_relevance(x[:1].numpy(), "/layer2/conv2/Conv", target=2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
