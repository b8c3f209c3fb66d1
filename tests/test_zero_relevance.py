"""Work left out where relevance is zero by structure (Gamma's negative branch, the sign logic of
stabilisers before a ReLU) changes no number."""
import numpy as np
import pytest

from onnxlrp import Explainer, composites, rules
from onnxlrp.canonical import canonicalize
from onnxlrp.compiler import _name_nodes, compile_explainer
from onnxlrp.compiler.analysis import analyse, explained_sources
from onnxlrp.graph import ForwardGraph
from onnxlrp.model import load_model
from onnxlrp.zero_relevance import ZeroRelevance


def _conv_count(compiled):
    return sum(node.op_type in ("Conv", "ConvTranspose") for node in compiled.model.graph.node)


@pytest.mark.parametrize("model", ["small_vgg.onnx", "tiny_resnet.onnx"])
@pytest.mark.parametrize("composite", [composites.EpsilonGammaBox(low=-3.0, high=3.0),
                                       composites.Uniform(rules.Gamma(gamma=0.5)),
                                       composites.Uniform(rules.Gamma(gamma=0.25, stabilizer=0.0)),
                                       composites.Uniform(rules.Epsilon(epsilon=1e-3))])
def test_skipping_changes_nothing_but_the_work(models_dir, rng, monkeypatch, model, composite):
    x = rng.normal(size=(4, 3, 32, 32)).astype(np.float32)
    skipped = compile_explainer(models_dir / model, composite=composite)
    fast = Explainer(models_dir / model, composite=composite).explain(x, target=[0, 3, -1, 7])
    monkeypatch.setattr(ZeroRelevance, "only_where_positive", lambda self, node: False)
    full = compile_explainer(models_dir / model, composite=composite)
    slow = Explainer(models_dir / model, composite=composite).explain(x, target=[0, 3, -1, 7])
    assert len(skipped.model.graph.node) < len(full.model.graph.node)
    if "Gamma" in repr(composite):
        assert _conv_count(skipped) < _conv_count(full)
    error = np.linalg.norm(fast.relevance - slow.relevance) / np.linalg.norm(slow.relevance)
    assert error < 1e-6


def _zeros(model_path, composite):
    """The analysis on the canonical graph, as the compiler sees it."""
    canonical = canonicalize(load_model(model_path), None)
    _name_nodes(canonical.model)
    fwd = ForwardGraph(canonical.model)
    analysis = analyse(fwd, explained_sources(fwd, None), canonical.logits, composites.get(composite))
    zeros = ZeroRelevance(fwd, analysis.path, analysis.rules, canonical.logits, analysis.live, analysis.kinds)
    return fwd, zeros, analysis.path


def test_which_layers_qualify(models_dir):
    fwd, zeros, path = _zeros(models_dir / "tiny_resnet.onnx", composites.EpsilonGammaBox(low=-3.0, high=3.0))
    convs = [node for node in path if node.op_type == "Conv"]
    qualify = {node.name: zeros.only_where_positive(node) for node in convs}
    # a block's first conv goes into a ReLU; its last conv goes into the residual Add: only the first qualify
    for node in convs:
        consumers = [c.op_type for c in fwd.consumers[node.output[0]]]
        if consumers == ["Relu"]:
            assert qualify[node.name], node.name
        else:
            assert not qualify[node.name], (node.name, consumers)
    assert any(qualify.values()) and not all(qualify.values())


def test_a_flat_layer_above_keeps_the_branch(models_dir):
    """Flat spreads relevance onto zero inputs too, so the ReLU output under it is not zero-preserving."""
    flat_above = composites.LayerMap([(range(1, 2), rules.Flat())], base=composites.Uniform(rules.Gamma()))
    fwd, zeros, path = _zeros(models_dir / "small_vgg.onnx", flat_above)
    convs = [node for node in path if node.op_type == "Conv"]
    assert not zeros.only_where_positive(convs[0])
    assert zeros.only_where_positive(convs[1])
