import socket
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "models" / "demo"


def _serve(app):
    """Runs app on a free port of 127.0.0.1 in a thread of this process; yields its address, then stops it."""
    uvicorn = pytest.importorskip("uvicorn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _create_app():
    for module in ("fastapi", "fastapi_offline", "uvicorn", "multipart"):
        pytest.importorskip(module)
    from onnxlrp.serve.app import create_app
    return create_app


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    """Several models: the two demo models and, where tokenizers installs, a tiny text model with its tokenizer
    and a tiny language model (a folder, its tokenizer.json beside the model: tiny_lm)."""
    create_app = _create_app()
    paths, tokenizers = [str(DEMO / "digits_cnn.onnx"), str(DEMO / "digits_vit.onnx")], {}
    try:
        from text_model import write_text_model
        text_model, tokenizer = write_text_model(tmp_path_factory.mktemp("text"))
        paths.append(str(text_model))
        tokenizers["sentiment"] = str(tokenizer)
        from decoder_model import write_decoder
        paths.append(str(write_decoder(tmp_path_factory.mktemp("lm") / "tiny_lm").parent))
    except ImportError:
        pass
    yield from _serve(create_app(paths, max_upload=256 * 1024, tokenizers=tokenizers))


@pytest.fixture(scope="session")
def one_model_server():
    """One model, the demo CNN: requests may leave out the model."""
    yield from _serve(_create_app()([str(DEMO / "digits_cnn.onnx")]))
