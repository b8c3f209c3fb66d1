import socket
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "models" / "demo"


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    """The app on a free port of 127.0.0.1, in a thread of this process; stopped at the end. It serves
    the two demo models and, where tokenizers installs, a tiny text model with its tokenizer."""
    pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("multipart")
    from onnxlrp.serve.app import create_app
    paths, tokenizers = [str(DEMO / "digits_cnn.onnx"), str(DEMO / "digits_vit.onnx")], {}
    try:
        from text_model import write_text_model
        text_model, tokenizer = write_text_model(tmp_path_factory.mktemp("text"))
        paths.append(str(text_model))
        tokenizers["sentiment"] = str(tokenizer)
    except ImportError:
        pass
    app = create_app(paths, max_upload=256 * 1024, tokenizers=tokenizers)
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
