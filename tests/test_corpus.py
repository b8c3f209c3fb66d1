"""The model corpus (models/corpus, made by tools/corpus/*): exporters, opsets and ops as users
bring them. For every model: the explainer reproduces the model's outputs, relevance is finite and
input-shaped with the default composite and with uniform LRP-0, and docs/rules.md's identity holds:
LRP-0 == gradient x input on pure-ReLU models, conservation (bias-free LRP-0) on the others.

Gradients come from central finite differences in float64 (onnx's reference evaluator), never from
onnxlrp."""
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from reference import to_float64

from onnxlrp import Explainer, composites, rules
from onnxlrp.canonical import canonicalize

# ONNXLRP_CORPUS=DIR runs the same checks on another corpus (tools/zoo/ builds full-size architectures)
CORPUS = os.environ.get("ONNXLRP_CORPUS") or os.path.join(os.path.dirname(__file__), "..", "models", "corpus")
MANIFEST = json.load(open(os.path.join(CORPUS, "manifest.json")))
NAMES = sorted(MANIFEST)


def _inputs(name, seed=0):
    """Inputs with |x| in [0.5, 1.5] (so that R / x is well defined), one dict entry per model input."""
    entry = MANIFEST[name]
    rng = np.random.default_rng(seed)
    shapes = entry.get("inputs") or {None: entry["input_shape"]}
    feeds = {}
    for input_name, shape in shapes.items():
        shape = [2] + list(shape[1:])
        feeds[input_name] = (rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.5, 1.5, size=shape)).astype(np.float32)
    return feeds


def _feeds(session, inputs):
    if None in inputs:
        return {session.get_inputs()[0].name: inputs[None]}
    return dict(inputs)


def _x(explainer, inputs):
    return inputs[None] if None in inputs else dict(inputs)


def _model_path(name):
    return os.path.join(CORPUS, name)


@pytest.mark.skipif(bool(os.environ.get("ONNXLRP_CORPUS")), reason="another corpus")
def test_corpus_is_varied():
    exporters = {e["exporter"].split(" (")[0] for e in MANIFEST.values()}
    opsets = {e["opset"] for e in MANIFEST.values()}
    assert len(MANIFEST) >= 20 and len(exporters) >= 4 and min(opsets) <= 9
    ops = set().union(*(e["ops"] for e in MANIFEST.values()))
    for op in ("Pad", "Slice", "Split", "Gather", "Resize", "ConvTranspose", "LRN", "Clip", "LeakyRelu", "PRelu",
               "Sigmoid", "HardSigmoid", "HardSwish", "Erf", "ReduceMean", "Sum", "Upsample", "Softplus", "Tanh"):
        assert op in ops, op


@pytest.mark.parametrize("name", NAMES)
def test_outputs_reproduced_and_relevance_finite(name):
    entry = MANIFEST[name]
    inputs = _inputs(name)
    # graph optimisations off: onnxruntime's Pad+MaxPool fusion (microsoft/onnxruntime#18136) pads with
    # -inf where the model pads with 0 and changes the outputs of e.g. Keras ResNet-V2 graphs
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(_model_path(name), options, providers=["CPUExecutionProvider"])
    per_sample = [session.run(None, _feeds(session, {k: v[i:i + 1] for k, v in inputs.items()})) for i in range(2)]
    expected = [np.concatenate(parts) for parts in zip(*per_sample)]  # some models have batch 1 baked in
    for composite in (None, composites.Uniform(rules.Epsilon(epsilon=0.0))):
        explainer = Explainer(_model_path(name), composite=composite, output=entry.get("output"))
        result = explainer.explain(_x(explainer, inputs))
        for got, want in zip(result.outputs, expected):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        for input_name, relevance in result.relevances.items():
            x = inputs[None] if None in inputs else inputs[input_name]
            assert relevance.shape == x.shape and np.all(np.isfinite(relevance))
        assert np.abs(result.relevance).sum() > 0


def _logit_fn(name, output):
    """Float64 forward of the canonical (dynamic-batch) model: flat input vectors in, logits out."""
    canonical = canonicalize(onnx.load(_model_path(name)), output)
    model = to_float64(canonical.model)
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info(canonical.logits, onnx.TensorProto.DOUBLE, None))
    from onnx.reference import ReferenceEvaluator
    evaluator = ReferenceEvaluator(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim][1:] for v in model.graph.input}

    def forward(flat):
        feeds, start = {}, 0
        for input_name, shape in shapes.items():
            size = int(np.prod(shape))
            feeds[input_name] = flat[:, start:start + size].reshape([len(flat)] + shape)
            start += size
        return evaluator.run(None, feeds)[0]
    return forward, list(shapes)


NORM_OPS = ("Add", "Sum", "Sub", "AveragePool", "GlobalAveragePool", "Resize", "ReduceMean", "ReduceSum")
RELU_ONLY = [n for n in NAMES if MANIFEST[n]["relu_only"]]
OTHERS = [n for n in NAMES if not MANIFEST[n]["relu_only"]]


def _gradient_identity_violation(name, composite):
    """How far R / x is from the gradient, along 48 coordinate and 4 random directions: the largest
    |error| beyond 1e-3 relative and beyond the finite differences' rounding, in units of the
    directional derivative's Cauchy-Schwarz scale."""
    inputs = {k: v[:1] for k, v in _inputs(name, seed=1).items()}
    explainer = Explainer(_model_path(name), composite=composite, output=MANIFEST[name].get("output"))
    result = explainer.explain(_x(explainer, inputs))
    target = int(result.target[0])
    forward, order = _logit_fn(name, MANIFEST[name].get("output"))
    if None in inputs:
        inputs = {order[0]: inputs[None]}
    x = np.concatenate([inputs[k].astype(np.float64).ravel() for k in order])
    relevance = np.concatenate([result.relevances[k].astype(np.float64).ravel() for k in order])
    rng = np.random.default_rng(2)
    coords = rng.choice(x.size, size=min(48, x.size), replace=False)
    directions = np.zeros((len(coords) + 4, x.size))
    directions[np.arange(len(coords)), coords] = 1.0
    random = rng.normal(size=(4, x.size))
    directions[len(coords):] = random / np.linalg.norm(random, axis=1, keepdims=True)  # a step of h crosses no kink
    h = 1e-5
    values = forward(x[None] + h * np.concatenate([directions, -directions]))[:, target]
    derivative = (values[:len(directions)] - values[len(directions):]) / (2 * h)
    predicted = directions @ (relevance / x)      # LRP-0 claims R = x * grad
    scale = np.linalg.norm(directions, axis=1) * np.linalg.norm(relevance / x)
    # the finite differences' own rounding, which matters where a deep random net's gradient is tiny
    fd_noise = 1e-14 * np.abs(values).max() / h * np.linalg.norm(directions, axis=1)
    return float(np.max((np.abs(predicted - derivative) - 1e-3 * np.abs(derivative) - fd_noise) / scale))


@pytest.mark.parametrize("name", RELU_ONLY)
def test_lrp0_equals_gradient_times_input(name):
    # float32 relevance: allow 1e-4 of the scale
    assert _gradient_identity_violation(name, composites.Uniform(rules.Epsilon(epsilon=0.0))) < 1e-4


@pytest.mark.skipif(bool(os.environ.get("ONNXLRP_CORPUS")), reason="another corpus")
def test_gradient_identity_check_can_fail():
    """The same check rejects a composite that is not the gradient (ZPlus layers, Flat first layer)."""
    assert _gradient_identity_violation("torch_vgg_op9.onnx", composites.EpsilonPlusFlat()) > 1e-2


def _bias_free(path):
    """The model with every bias set to zero: layer biases, BatchNorm shifts, per-channel constants
    added or subtracted. docs/rules.md: bias-free LRP-0 must conserve relevance exactly."""
    model = onnx.load(path)
    inits = {t.name: t for t in model.graph.initializer}
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    shifts = set()
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2:
            shifts.add(node.input[2])
        elif node.op_type == "BatchNormalization":
            shifts.update(node.input[2:4])
        elif node.op_type in ("Add", "Sub"):  # per-channel shifts; a scalar one is part of an activation (hard-swish)
            shifts.update(name for name in node.input
                          if name in inits and np.prod(inits[name].dims) > 1
                          or name in constants and np.prod(constants[name].attribute[0].t.dims) > 1)
    for name in shifts:
        if name in inits and inits[name].data_type == onnx.TensorProto.FLOAT:
            zero = np.zeros_like(onnx.numpy_helper.to_array(inits[name]))
            inits[name].CopyFrom(onnx.numpy_helper.from_array(zero, name))
        elif name in constants:
            attribute = constants[name].attribute[0]
            if attribute.name == "value" and attribute.t.data_type == onnx.TensorProto.FLOAT:
                zero = np.zeros_like(onnx.numpy_helper.to_array(attribute.t))
                attribute.t.CopyFrom(onnx.numpy_helper.from_array(zero))
    return model


@pytest.mark.parametrize("name", OTHERS)
def test_bias_free_lrp0_conserves(name):
    inputs = _inputs(name, seed=1)
    x = inputs[None] if None in inputs else dict(inputs)
    # unstabilised, so that nothing is absorbed even where a deep random net's activations are tiny
    composite = composites.LayerMap([(op, rules.Norm(stabilizer=0.0)) for op in NORM_OPS],
                                    base=composites.Uniform(rules.Epsilon(0.0)))
    explainer = Explainer(_bias_free(_model_path(name)), composite=composite, output=MANIFEST[name].get("output"))
    result = explainer.explain(x, mode="one")
    total = sum(r.reshape(len(r), -1).sum(axis=1) for r in result.relevances.values())
    np.testing.assert_allclose(total, 1.0, rtol=1e-3)
