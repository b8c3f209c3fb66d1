"""A dense layer that writes a graph output (onnxlrp/compiler/output_layer.py): one MatMul that writes the output
itself, instead of the canonical Reshape -> Gemm -> Reshape whose last Reshape onnxruntime copies into the output."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest

import onnxlrp.compiler as compiler
from onnxlrp import Explainer
from tests.compiler.test_row import PER_POSITION, VOCAB, _x

ort = pytest.importorskip("onnxruntime")

WITH_BIAS = PER_POSITION.replace("float[5, 6] w2", "float[6] b2 = {0.1, -0.2, 0.3, 0.0, 0.2, -0.1}, float[5, 6] w2") \
    .replace("logits = MatMul(a, w2)", "z = MatMul(a, w2)\n    logits = Add(z, b2)")


def _producer_of_logits(compiled) -> onnx.NodeProto:
    return next(n for n in compiled.model.graph.node if "logits" in n.output)


def _explain(model, composite, memory="default"):
    result = Explainer(model, composite=composite, memory=memory).explain(_x(), target=np.array([-1, 4]),
                                                                          position=np.array([-1, 3]))
    return result.relevance, result.outputs[0]


@pytest.mark.parametrize("composite, memory", [("attn_lrp", "default"), ("attn_lrp", "low"), ("cp_lrp", "default")])
def test_the_logits_come_from_one_matmul_with_the_weight_stored_once(composite, memory, monkeypatch):
    model = onnx.parser.parse_model(PER_POSITION)
    compiled = compiler.compile_explainer(model, composite=composite, memory=memory)
    head = _producer_of_logits(compiled)
    initializers = {t.name: t for t in compiled.model.graph.initializer}
    assert head.op_type == "MatMul" and list(initializers[head.input[1]].dims) == [5, VOCAB]
    assert not any(sorted(t.dims) == [5, VOCAB] for name, t in initializers.items() if name != head.input[1])
    relevance, logits = _explain(model, composite, memory)
    inference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(logits, inference.run(None, {"x": _x()})[0], rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(compiler, "output_layers_as_matmul", lambda nodes, *args: nodes)
    assert _producer_of_logits(compiler.compile_explainer(model, composite=composite, memory=memory)).op_type \
        == "Reshape"
    whole, _ = _explain(model, composite, memory)
    np.testing.assert_allclose(relevance, whole, rtol=1e-6, atol=1e-9)


def test_a_layer_whose_flat_output_the_relevance_reads_or_with_a_bias_stays():
    """Epsilon divides by the layer's output (read flat); a bias makes the Gemm's third operand: both stay a Gemm
    under the Reshape, and explain as before."""
    for text, composite in [(PER_POSITION, "epsilon"), (WITH_BIAS, "attn_lrp")]:
        compiled = compiler.compile_explainer(onnx.parser.parse_model(text), composite=composite)
        assert _producer_of_logits(compiled).op_type == "Reshape"
