"""A real Triton server loads an exported repository as it is, and answers HTTP and gRPC.

PyPI's nvidia-pytriton ships a CPU tritonserver (Triton 2.51) whose only backend is Python; NVIDIA's C++
onnxruntime backend does not install here. So the server gets a backend folder of the tests' own: the
Python backend, and under the name onnxruntime a Python-based backend (tests/triton_backend) that runs
the repository's model.onnx with onnxruntime. What this covers: Triton parsing our config.pbtxt, its
max_batch_size, dynamic batching and reshape, the HTTP and gRPC front ends; what it does not: the C++
onnxruntime backend itself (docs/deployment.md).

nvidia-pytriton pins numpy < 2, so it lives in a venv of its own: ONNXLRP_TRITON_VENV, default
.triton-venv at the repository's root (.ci/run builds it; this fixture builds it where it is missing,
and skips where that fails)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from onnxlrp import Explainer
from onnxlrp.cli import main

grpc = pytest.importorskip("tritonclient.grpc")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("ONNXLRP_TRITON_VENV", ROOT / ".triton-venv"))
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
MAX_BATCH = 4


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{PYTHON}" / "site-packages"


def _triton_venv() -> Path:
    server = _site_packages(VENV) / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    if not server.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True, timeout=300)
            subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", "nvidia-pytriton==0.7.0",
                            "onnxruntime", "numpy<2"], check=True, capture_output=True, timeout=1200)
        except (subprocess.SubprocessError, OSError) as exc:
            pytest.skip(f"nvidia-pytriton does not install here: {exc}")
    if not server.exists():
        pytest.skip("nvidia-pytriton installed no tritonserver")
    return VENV


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _backends(folder: Path, venv: Path) -> Path:
    triton = _site_packages(venv) / "pytriton" / "tritonserver"
    python = folder / "python"
    python.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy(triton / "backends" / "python" / name, python / name)
    shutil.copy(triton / "python_backend_stubs" / PYTHON / "triton_python_backend_stub", python)
    shutil.copytree(ROOT / "tests" / "triton_backend" / "onnxruntime", folder / "onnxruntime")
    (folder / "onnxruntime" / "site_packages.txt").write_text(str(_site_packages(venv)))
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    venv = _triton_venv()
    folder = tmp_path_factory.mktemp("triton")
    repository = folder / "repository"
    assert main(["export", str(ROOT / "models" / "tiny_vgg.onnx"), "--format", "triton", "--out", str(repository),
                 "--name", "vgg", "--max-batch-size", str(MAX_BATCH), "--queue-delay-us", "200000"]) == 0
    http, grpc_port = _free_port(), _free_port()
    site = _site_packages(venv)
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(
        [sysconfig.get_config_var("LIBDIR"), str(site / "nvidia_pytriton.libs"), os.environ.get("LD_LIBRARY_PATH", "")])}
    log = open(folder / "server.log", "w")
    process = subprocess.Popen(
        [str(site / "pytriton" / "tritonserver" / "bin" / "tritonserver"), f"--model-repository={repository}",
         f"--backend-directory={_backends(folder / 'backends', venv)}", "--http-address=127.0.0.1",
         f"--http-port={http}", "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}", "--allow-metrics=false"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            if process.poll() is not None:
                pytest.fail(f"tritonserver exited: {(folder / 'server.log').read_text()[-2000:]}")
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/vgg/ready", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"tritonserver not ready in 90 s: {(folder / 'server.log').read_text()[-2000:]}")
        yield {"http": http, "grpc": grpc_port, "repository": repository}
    finally:
        process.terminate()            # by its own PID
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def explainer():
    return Explainer(str(ROOT / "models" / "tiny_vgg.onnx"))


def _request(rng, batch):
    x = rng.normal(size=(batch, 3, 32, 32)).astype(np.float32)
    target = rng.integers(-1, 10, size=(batch, 1)).astype(np.int64)   # -1: the predicted class
    return x, target


def _http_infer(port, x, target):
    body = {"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()},
                       {"name": "target", "shape": list(target.shape), "datatype": "INT64",
                        "data": target.ravel().tolist()}]}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/vgg/infer", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    reply = json.load(urllib.request.urlopen(request, timeout=60))
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in reply["outputs"]}


def _grpc_infer(port, x, target):
    client = grpc.InferenceServerClient(f"127.0.0.1:{port}")
    inputs = [grpc.InferInput("image", list(x.shape), "FP32"), grpc.InferInput("target", list(target.shape), "INT64")]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(target)
    result = client.infer("vgg", inputs)
    return {name: result.as_numpy(name) for name in ("relevance_image", "target_explained", "probabilities")}


def _statistics(port):
    stats = grpc.InferenceServerClient(f"127.0.0.1:{port}").get_inference_statistics("vgg", as_json=True)
    entry = stats["model_stats"][0]
    return int(entry.get("inference_count", 0)), int(entry.get("execution_count", 0))


def test_concurrent_requests_over_http_and_grpc_equal_the_in_process_explainer(server, explainer):
    rng = np.random.default_rng(0)
    requests = [(_request(rng, batch), protocol) for batch in (1, 2, 3, 1, 4, 2, 1, 3)
                for protocol in ("http", "grpc")]
    before = _statistics(server["grpc"])
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        futures = [pool.submit(_http_infer if protocol == "http" else _grpc_infer, server[protocol], x, target)
                   for (x, target), protocol in requests]
        replies = [f.result() for f in futures]
    for ((x, target), _), reply in zip(requests, replies):
        expected = explainer.explain(x, target=target.ravel())
        np.testing.assert_allclose(reply["relevance_image"], expected.relevance, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(reply["target_explained"].ravel(), expected.target)
    inferences, executions = (a - b for a, b in zip(_statistics(server["grpc"]), before))
    assert inferences == sum(len(x) for (x, _), _ in requests)
    assert executions < len(requests)   # the dynamic batcher combined requests


def test_a_batch_over_max_batch_size_is_refused(server):
    x, target = _request(np.random.default_rng(1), MAX_BATCH + 1)
    with pytest.raises(Exception, match="batch-size must be <= 4"):
        _grpc_infer(server["grpc"], x, target)
