"""A stand-in for Triton's onnxruntime backend, for the tests only: a Python-based backend (Triton loads
backends/onnxruntime/model.py through its Python backend) that runs the repository's model.onnx with
onnxruntime. NVIDIA's C++ onnxruntime backend does not install here; this one sees the exported
repository unchanged: its config.pbtxt (platform onnxruntime_onnx, max_batch_size, dynamic batching,
reshape) is parsed and applied by Triton itself.

The requests Triton's dynamic batcher hands over together run as one onnxruntime batch."""
import json
import os
import sys

# The stub's interpreter does not see the test venv's packages: the fixture names its site-packages in
# a file beside this one.
_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.exists(os.path.join(_HERE, "site_packages.txt")):
    with open(os.path.join(_HERE, "site_packages.txt")) as listed:
        sys.path[:0] = [line.strip() for line in listed if line.strip()]

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(folder, "model.onnx")
        if os.path.isdir(path):   # a model with external data sits in a folder named model.onnx
            path = os.path.join(path, "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [entry["name"] for entry in config["input"]]
        self.outputs = [entry["name"] for entry in config["output"]]
        self.model_inputs = {i.name: i for i in self.session.get_inputs()}

    def execute(self, requests):
        feeds = [{name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
                 for request in requests]
        sizes = [len(next(iter(f.values()))) for f in feeds]
        batch = {name: np.concatenate([f[name] for f in feeds]) for name in self.inputs}
        results = self.session.run(self.outputs, batch)
        responses, start = [], 0
        for size in sizes:
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(result[start:start + size]))
                       for name, result in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses
