"""A seeded generator of hostile and broken model files, for the fuzz tests: byte mutations of a good
file, and graph mutations, each class a function (model, rng, folder) -> the file to hand to the CLI."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
BASES = {"vgg": ROOT / "models" / "tiny_vgg.onnx", "mlp": ROOT / "models" / "mlp.onnx"}
INPUTS = {"vgg": ROOT / "models" / "example.png", "mlp": ROOT / "models" / "example_features.npy"}


def _save(model, folder: Path, name="model.onnx") -> Path:
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def _weights(model):
    return [t for t in model.graph.initializer if len(t.dims) >= 2]


# ---- byte mutations ----

def truncated(model, rng, folder):
    data = model.SerializeToString()
    return _bytes(folder, data[:int(rng.integers(1, len(data) - 1))])


def flipped(model, rng, folder):
    data = bytearray(model.SerializeToString())
    for i in rng.integers(0, len(data), size=int(rng.integers(1, 40))):
        data[i] ^= int(rng.integers(1, 256))
    return _bytes(folder, bytes(data))


def zeroed(model, rng, folder):
    data = bytearray(model.SerializeToString())
    start = int(rng.integers(0, len(data) - 1))
    data[start:start + int(rng.integers(1, 4096))] = b"\0" * len(data[start:start + 4096][:4096])
    return _bytes(folder, bytes(data[:len(model.SerializeToString())]))


def random_bytes(model, rng, folder):
    return _bytes(folder, rng.bytes(int(rng.integers(1, 5000))))


def empty(model, rng, folder):
    return _bytes(folder, b"")


def _bytes(folder, data):
    path = folder / "model.onnx"
    path.write_bytes(data)
    return path


# ---- graph mutations ----

def dangling_input(model, rng, folder):
    node = model.graph.node[int(rng.integers(0, len(model.graph.node)))]
    node.input[0] = "tensor_nobody_produces"
    return _save(model, folder)


def cycle(model, rng, folder):
    k = int(rng.integers(0, len(model.graph.node) - 1))
    model.graph.node[k].input[0] = model.graph.node[k + 1].output[0]
    return _save(model, folder)


def duplicate_output(model, rng, folder):
    model.graph.output.append(model.graph.output[0])
    return _save(model, folder)


def missing_initializer(model, rng, folder):
    weights = _weights(model)
    model.graph.initializer.remove(weights[int(rng.integers(0, len(weights)))])
    return _save(model, folder)


def unknown_op(model, rng, folder):
    model.graph.node[int(rng.integers(0, len(model.graph.node)))].op_type = "FrobnicateTensor"
    return _save(model, folder)


def unknown_domain(model, rng, folder):
    model.graph.node[int(rng.integers(0, len(model.graph.node)))].domain = "com.example.secret"
    model.opset_import.append(helper.make_opsetid("com.example.secret", 1))
    return _save(model, folder)


def contradicting_attribute(model, rng, folder):
    for node in model.graph.node:
        if node.op_type == "Conv":
            node.attribute.append(helper.make_attribute("kernel_shape", [5, 5]))
            break
        if node.op_type in ("MatMul", "Gemm"):   # transB against a [K, N] weight
            node.op_type = "Gemm"
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("transB", 1))
            break
    return _save(model, folder)


def wrong_element_type(model, rng, folder):
    model.graph.input[0].type.tensor_type.elem_type = int(rng.choice([TensorProto.INT8, TensorProto.STRING,
                                                                       TensorProto.BOOL]))
    return _save(model, folder)


def wrong_rank(model, rng, folder):
    weight = _weights(model)[0]
    dims = [int(np.prod(weight.dims))]
    del weight.dims[:]
    weight.dims.extend(dims)
    return _save(model, folder)


def wrong_weight_shape(model, rng, folder):
    weight = _weights(model)[0]
    values = numpy_helper.to_array(weight)
    flat = values.reshape(-1)
    replacement = numpy_helper.from_array(flat[: flat.size // 2].reshape(values.shape[0] // 2 or 1, -1), weight.name)
    weight.CopyFrom(replacement)
    return _save(model, folder)


def zero_dim(model, rng, folder):
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 0
    return _save(model, folder)


def absurd_dim(model, rng, folder):
    model.graph.input[0].type.tensor_type.shape.dim[-1].dim_value = 2**40
    return _save(model, folder)


def no_outputs(model, rng, folder):
    del model.graph.output[:]
    return _save(model, folder)


def no_nodes(model, rng, folder):
    del model.graph.node[:]
    return _save(model, folder)


def opset_out_of_range(model, rng, folder):
    model.opset_import[0].version = int(rng.choice([0, 99, 10**6]))
    return _save(model, folder)


def ir_out_of_range(model, rng, folder):
    model.ir_version = int(rng.choice([0, 1, 99]))
    return _save(model, folder)


def control_flow(model, rng, folder):
    """The output goes through an If whose condition depends on the input."""
    out = model.graph.output[0].name
    renamed = out + "_inner"
    for node in model.graph.node:
        for k, name in enumerate(node.output):
            if name == out:
                node.output[k] = renamed
    then_graph = helper.make_graph([helper.make_node("Identity", [renamed], ["then_out"])], "then", [],
                                   [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)])
    else_graph = helper.make_graph([helper.make_node("Neg", [renamed], ["else_out"])], "else", [],
                                   [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)])
    model.graph.node.extend([
        helper.make_node("ReduceSum", [model.graph.input[0].name], ["cond_sum"], keepdims=0),
        helper.make_node("Greater", ["cond_sum", "cond_zero"], ["cond"]),
        helper.make_node("If", ["cond"], [out], then_branch=then_graph, else_branch=else_graph)])
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), "cond_zero"))
    return _save(model, folder)


def nan_weights(model, rng, folder):
    weight = _weights(model)[0]
    values = numpy_helper.to_array(weight).copy()
    values.flat[int(rng.integers(0, values.size))] = np.nan
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    return _save(model, folder)


def inf_weights(model, rng, folder):
    weight = _weights(model)[0]
    values = numpy_helper.to_array(weight).copy()
    values.flat[int(rng.integers(0, values.size))] = np.inf
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    return _save(model, folder)


def _external(model, folder, location):
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    saved = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for tensor in saved.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    return _save(saved, folder)


def external_outside(model, rng, folder):
    outside = folder.parent / f"{folder.name}_outside.bin"
    (folder / "weights.bin").parent.mkdir(exist_ok=True)
    path = _external(model, folder, "weights.bin")
    (folder / "weights.bin").rename(outside)
    return _external(model, folder, os.path.relpath(outside, folder)) and path


def external_absolute(model, rng, folder):
    return _external(model, folder, str(rng.choice(["/etc/passwd", "/proc/self/mem", "/dev/zero"])))


def external_symlink(model, rng, folder):
    target = folder.parent / f"{folder.name}_secret.bin"
    target.write_bytes(b"\0" * 4096)
    path = _external(model, folder, "link.bin")
    (folder / "link.bin").symlink_to(target)
    return path


def external_symlink_proc(model, rng, folder):
    path = _external(model, folder, "mem.bin")
    (folder / "mem.bin").symlink_to("/proc/self/mem")
    return path


def external_missing(model, rng, folder):
    path = _external(model, folder, "weights.bin")
    (folder / "weights.bin").unlink()
    return path


def external_short(model, rng, folder):
    path = _external(model, folder, "weights.bin")
    data = (folder / "weights.bin").read_bytes()
    (folder / "weights.bin").write_bytes(data[: len(data) // 3])
    return path


def attribute_wrong_type(model, rng, folder):
    for node in model.graph.node:
        if node.op_type in ("Conv", "Softmax", "MaxPool", "Gemm"):
            node.attribute.append(helper.make_attribute("axis" if node.op_type == "Softmax" else "strides", 1.5))
            break
    return _save(model, folder)


def shuffled_nodes(model, rng, folder):
    nodes = list(model.graph.node)
    rng.shuffle(nodes)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return _save(model, folder)


def unchanged(model, rng, folder):
    return _save(model, folder)


MUTATIONS = {f.__name__: f for f in (
    truncated, flipped, zeroed, random_bytes, empty, dangling_input, cycle, duplicate_output, missing_initializer,
    unknown_op, unknown_domain, contradicting_attribute, wrong_element_type, wrong_rank, wrong_weight_shape,
    zero_dim, absurd_dim, no_outputs, no_nodes, opset_out_of_range, ir_out_of_range, control_flow, nan_weights,
    inf_weights, external_outside, external_absolute, external_symlink, external_symlink_proc, external_missing,
    external_short, attribute_wrong_type, shuffled_nodes, unchanged)}


def make(base: str, mutation: str, seed: int, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(BASES[base]))
    return MUTATIONS[mutation](model, np.random.default_rng(seed), folder)
