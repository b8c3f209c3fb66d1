import socket
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "models" / "demo"


WORDS = ["[UNK]", "the", "film", "was", "a", "delight", "dull", "plot", "and", "not"]


def _text_model(folder: Path) -> tuple[Path, Path]:
    """A tiny sentiment-like model over token ids (embeddings, masked mean, Tanh, dense) and its
    WordLevel tokenizer.json."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from tokenizers import Tokenizer, models, pre_tokenizers
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (int64[N, S] input_ids, int64[N, S] attention_mask) => (float[N, 2] logits) {
        e = Gather(table, input_ids)
        m = Cast<to = 1>(attention_mask)
        mu = Unsqueeze(m, minus_one)
        masked = Mul(e, mu)
        total = ReduceSum<keepdims = 0>(masked, one)
        h = Tanh(total)
        logits = MatMul(h, w)
    }""")
    rng = np.random.default_rng(0)
    for name, value in {"table": rng.normal(size=(len(WORDS), 4)).astype(np.float32),
                        "w": rng.normal(size=(4, 2)).astype(np.float32),
                        "minus_one": np.array([-1], np.int64), "one": np.array([1], np.int64)}.items():
        model.graph.initializer.append(numpy_helper.from_array(value, name))
    onnx.save(model, folder / "sentiment.onnx")
    return folder / "sentiment.onnx", folder / "tokenizer.json"


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
        text_model, tokenizer = _text_model(tmp_path_factory.mktemp("text"))
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
