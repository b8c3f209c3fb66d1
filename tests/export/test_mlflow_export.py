"""MLflow models: the exported folder loads as a pyfunc model, and `mlflow models serve` answers an HTTP
request with the in-process explainer's relevance."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from onnxlrp import Explainer
from onnxlrp.cli import main
from onnxlrp.errors import OnnxLrpError
from onnxlrp.export import export

mlflow_pyfunc = pytest.importorskip("mlflow.pyfunc", reason="pip install 'onnxlrp[mlflow]'")


def test_pyfunc_model_gives_the_in_process_relevance(tmp_path, models_dir, rng):
    out = export(models_dir / "tiny_resnet.onnx", tmp_path / "explainer", format="mlflow")
    model = mlflow_pyfunc.load_model(str(out))
    x = rng.normal(size=(3, 3, 32, 32)).astype(np.float32)
    target = np.array([0, -1, 9], np.int64)
    served = model.predict({"image": x, "target": target})
    expected = Explainer(models_dir / "tiny_resnet.onnx").explain(x, target=target)
    np.testing.assert_allclose(served["relevance_image"], expected.relevance, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(served["target_explained"], expected.target)
    signature = model.metadata.get_input_schema().input_types_dict()
    assert signature["image"] == np.float32 and signature["target"] == np.int64
    assert "EpsilonPlusFlat" in model.metadata.metadata["onnxlrp"]


def test_existing_folder_is_not_replaced(tmp_path, models_dir):
    out = tmp_path / "explainer"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OnnxLrpError, match="already exists"):
        export(models_dir / "mlp.onnx", out, format="mlflow")
    assert (out / "keep.txt").read_text() == "mine"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload: dict, timeout: float = 30):
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_mlflow_models_serve_round_trip(tmp_path, models_dir, rng):
    """Export with the CLI, start `mlflow models serve` (local environment) on a loopback port, send a batch
    and a target per sample over HTTP, compare with the in-process explainer, stop the server."""
    out = tmp_path / "served"
    assert main(["export", str(models_dir / "small_vgg.onnx"), "--format", "mlflow", "--out", str(out)]) == 0
    port = _free_port()
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", str(out), "--env-manager",
                               "local", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("mlflow models serve did not come up:\n" + server.stdout.read().decode()[-3000:])
            time.sleep(0.5)
        x = rng.normal(size=(4, 3, 32, 32)).astype(np.float32)
        target = [3, -1, 0, 9]
        answer = _post(f"http://127.0.0.1:{port}/invocations", {"inputs": {"image": x.tolist(), "target": target}})
        served = answer["predictions"]
        expected = Explainer(models_dir / "small_vgg.onnx").explain(x, target=np.array(target))
        np.testing.assert_allclose(np.array(served["relevance_image"], np.float32), expected.relevance,
                                   rtol=1e-6, atol=1e-7)
        assert served["target_explained"] == expected.target.tolist()
        np.testing.assert_allclose(np.array(served["logits"], np.float32), expected.outputs[0], rtol=1e-6, atol=1e-6)
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()
        server.stdout.close()
