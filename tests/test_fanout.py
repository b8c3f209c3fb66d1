"""Fan-out factoring: Sum(x*a, b*x, y*c) -> Sum(y*c, x*(a+b)), the same numbers with fewer Muls."""
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from onnxlrp import compiler
from onnxlrp.compiler import compile_explainer
from onnxlrp.fanout import factor_fanout_products
from onnxlrp.runtime import Explainer

NAMES = ["x", "a", "b", "y", "c"]


def _nodes():
    return [helper.make_node("Mul", ["x", "a"], ["p"], name="p"),
            helper.make_node("Mul", ["b", "x"], ["q"], name="q"),
            helper.make_node("Mul", ["y", "c"], ["r"], name="r"),
            helper.make_node("Sum", ["p", "q", "r"], ["s"], name="s")]


def _run(nodes, outputs=("s",)):
    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 3])  # noqa: E731
    graph = helper.make_graph(nodes, "g", [value(n) for n in NAMES], [value(n) for n in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = {n: np.random.default_rng(i).normal(size=(2, 3)).astype(np.float32) for i, n in enumerate(NAMES)}
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_products_sharing_an_operand_become_one_product_of_a_sum():
    factored = factor_fanout_products(_nodes())
    assert [n.op_type for n in factored].count("Mul") == 2
    mul = next(n for n in factored if n.op_type == "Mul" and "x" in n.input)
    assert sorted(next(n for n in factored if n.output[0] == mul.input[1]).input) == ["a", "b"]
    np.testing.assert_allclose(_run(factored)[0], _run(_nodes())[0], rtol=1e-6)


def test_a_product_read_elsewhere_or_kept_as_output_stays():
    read_twice = _nodes() + [helper.make_node("Identity", ["p"], ["p_out"], name="p_out")]
    assert [n.op_type for n in factor_fanout_products(read_twice)].count("Mul") == 3
    assert [n.op_type for n in factor_fanout_products(_nodes(), keep={"q"})].count("Mul") == 3


def test_nothing_shared_nothing_changed():
    nodes = [helper.make_node("Mul", ["x", "a"], ["p"], name="p"), helper.make_node("Mul", ["y", "b"], ["q"], name="q"),
             helper.make_node("Sum", ["p", "q"], ["s"], name="s")]
    assert factor_fanout_products(nodes) == nodes


def test_residual_network_relevance_unchanged_with_fewer_muls(models_dir, monkeypatch):
    """tiny_resnet's block inputs feed the next block and its skip connection: both terms are x * c."""
    model = models_dir / "tiny_resnet.onnx"
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    factored = compile_explainer(model, composite="epsilon_plus_flat").model
    on = Explainer(model, composite="epsilon_plus_flat").explain(x).relevance
    monkeypatch.setattr(compiler, "factor_fanout_products", lambda nodes, keep: nodes)
    plain = compile_explainer(model, composite="epsilon_plus_flat").model
    off = Explainer(model, composite="epsilon_plus_flat").explain(x).relevance
    muls = lambda m: sum(n.op_type == "Mul" for n in m.graph.node)  # noqa: E731
    assert muls(factored) < muls(plain)
    np.testing.assert_allclose(on, off, rtol=1e-5, atol=1e-6 * np.abs(off).max())
