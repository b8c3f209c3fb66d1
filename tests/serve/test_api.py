"""The JSON API of `onnxlrp serve`: good requests, bad requests (4xx with a JSON error, and the server goes
on serving), every error in one shape, one model served and several, concurrency, and no request reaching
a path of its choosing."""
from __future__ import annotations

import base64
import io
import json
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from pathlib import Path

from onnxlrp import Explainer
from onnxlrp.composites import AttnLRP

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"

DIGIT = (DEMO / "digits" / "test_4.png").read_bytes()


def _multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    boundary = "onnxlrpboundary"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _post(base: str, fields: dict, files: dict | None = None, body: bytes | None = None, kind: str | None = None,
          path: str = "/v1/explain"):
    if body is None:
        if files is None:
            body, kind = json.dumps(fields).encode(), "application/json"
        else:
            body, kind = _multipart(fields, files)
    return _call(urllib.request.Request(f"{base}{path}", data=body, headers={"Content-Type": kind}))


def _call(request) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        assert error.headers.get_content_type() == "application/json"
        return error.code, json.load(error)


def _sample():
    return np.asarray(Image.open(io.BytesIO(DIGIT)), np.float32)[None] / 255


def test_models_are_listed(live_server):
    listing = json.load(urllib.request.urlopen(f"{live_server}/v1/models"))
    names = {m["name"]: m for m in listing["models"]}
    assert {"digits_cnn", "digits_vit"} <= set(names)
    assert names["digits_cnn"]["classes"] == 10 and "epsilon_gamma_box" in names["digits_cnn"]["composites"]
    assert names["digits_vit"]["composites"] == ["attn_lrp", "cp_lrp"]
    # the ViT is explained with Gamma on its linear layers unless the request says otherwise (README)
    assert names["digits_vit"]["params"]["attn_lrp"] == {"gamma": 0.25}
    assert names["digits_cnn"]["params"]["epsilon_gamma_box"] == {"low": 0.0, "high": 1.0, "gamma": 0.25}
    assert "/v1/explain" in json.load(urllib.request.urlopen(f"{live_server}/openapi.json"))["paths"]


def test_an_uploaded_digit_is_explained_as_in_process(live_server):
    status, reply = _post(live_server, {"model": "digits_cnn", "raw": "true"}, {"image": ("four.png", DIGIT)})
    assert status == 200 and reply["target"] == 4 and reply["scores"][0]["class"] == 4
    expected = Explainer(str(DEMO / "digits_cnn.onnx")).explain(_sample()[None], target=4).relevance[0]
    relevance = np.load(io.BytesIO(base64.b64decode(reply["relevance_npy"])))
    np.testing.assert_allclose(relevance, expected, rtol=1e-5, atol=1e-7)
    assert reply["heatmap"].startswith("data:image/png;base64,")
    assert 0.5 < reply["relevance"]["conservation"] <= 1.0 + 1e-6


def test_a_base64_array_and_composite_parameters(live_server):
    x = _sample()
    array = {"dtype": "float32", "shape": list(x.shape), "data": base64.b64encode(x.tobytes()).decode()}
    status, reply = _post(live_server, {"model": "digits_cnn", "array": array, "target": 9, "composite":
                                        "epsilon_gamma_box", "params": {"low": 0, "high": 1, "gamma": 0.5},
                                        "mode": "prob"})
    assert status == 200 and reply["target"] == 9 and reply["params"] == {"low": 0.0, "high": 1.0, "gamma": 0.5}
    status, reply = _post(live_server, {"model": "digits_vit", "array": array, "composite": "cp_lrp"})
    assert status == 200 and reply["composite"] == "cp_lrp"
    status, reply = _post(live_server, {"model": "digits_vit", "array": array, "raw": True})
    assert status == 200 and reply["composite"] == "attn_lrp" and reply["params"] == {"gamma": 0.25}
    expected = Explainer(str(DEMO / "digits_vit.onnx"), composite=AttnLRP(gamma=0.25)).explain(x[None]).relevance[0]
    relevance = np.load(io.BytesIO(base64.b64decode(reply["relevance_npy"])))
    np.testing.assert_allclose(relevance, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fields,files,body,status,words", [
    ({"model": "digits_cnn"}, {"image": ("notes.txt", b"just some text")}, None, 415, "not an image"),
    ({"model": "digits_cnn"}, {"image": ("broken.png", DIGIT[:40])}, None, 415, "not an image"),
    ({"model": "digits_cnn"}, {"image": ("big.png", b"\0" * (300 * 1024))}, None, 413, "limit"),
    ({"model": "digits_cnn", "composite": "zennit_magic"}, {"image": ("d.png", DIGIT)}, None, 422, "not offered"),
    ({"model": "digits_cnn", "target": 10}, {"image": ("d.png", DIGIT)}, None, 422, "out of range"),
    ({"model": "digits_cnn", "target": -2}, {"image": ("d.png", DIGIT)}, None, 422, "-1: the predicted class"),
    ({"model": "digits_cnn", "target": "three"}, {"image": ("d.png", DIGIT)}, None, 422, "integer"),
    ({"model": "digits_cnn", "mode": "custom"}, {"image": ("d.png", DIGIT)}, None, 422, "unknown mode"),
    ({"model": "../../etc/passwd"}, {"image": ("d.png", DIGIT)}, None, 404, "no model"),
    ({}, {"image": ("d.png", DIGIT)}, None, 422, "no field 'model'"),
    ({"model": "digits_cnn"}, {}, None, 400, "no file field"),
    ({}, None, b"{not json", 400, "not valid JSON"),
    ({"model": "digits_cnn", "array": {"dtype": "float32", "shape": [2, 2], "data": "AAAA"}}, None, None, 400,
     "base64"),
])
def test_bad_requests_get_a_4xx_json_error_and_the_server_goes_on(live_server, fields, files, body, status, words):
    got, reply = _post(live_server, fields, files, body=body, kind="application/json" if body else None)
    assert got == status and words in reply["error"] and set(reply) == {"error"}, reply
    assert _post(live_server, {"model": "digits_cnn"}, {"image": ("d.png", DIGIT)})[0] == 200


def test_assets_cannot_reach_other_files(live_server):
    for path in ("/static/..%2fapp.py", "/static/models.py", "/static/%2e%2e/%2e%2e/README.md"):
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"{live_server}{path}")
        assert error.value.code == 404


def test_concurrent_requests(live_server):
    digits = [(DEMO / "digits" / f"test_{d}.png").read_bytes() for d in range(10)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(lambda data: _post(live_server, {"model": "digits_cnn"}, {"image": ("d.png", data)}),
                                digits * 2))
    assert all(status == 200 for status, _ in replies)
    assert sum(reply["target"] == d for (_, reply), d in zip(replies, list(range(10)) * 2)) >= 18


def test_a_text_model_explains_a_sentence(live_server):
    pytest.importorskip("tokenizers")
    status, reply = _post(live_server, {"model": "sentiment", "text": "the film was a delight", "target": 1})
    assert status == 200 and reply["target"] == 1
    assert [t["token"] for t in reply["tokens"]] == ["the", "film", "was", "a", "delight"]
    assert all(np.isfinite(t["relevance"]) for t in reply["tokens"])
    status, reply = _post(live_server, {"model": "sentiment", "text": "   "})
    assert status == 422 and "sentence" in reply["error"]


@pytest.mark.parametrize("method,path,status,words", [
    ("GET", "/no/such/page", 404, "no page or endpoint at /no/such/page"),
    ("GET", "/v1/explain", 405, "GET is not allowed on /v1/explain; use POST"),
    ("POST", "/v1/models", 405, "POST is not allowed on /v1/models; use GET"),
    ("GET", "/static/nothing.js", 404, "no asset"),
    ("GET", "/static-offline-docs/nothing.js", 404, "no page or endpoint"),
])
def test_the_frameworks_errors_have_the_same_shape(live_server, method, path, status, words):
    request = urllib.request.Request(f"{live_server}{path}", method=method, data=b"" if method == "POST" else None)
    got, reply = _call(request)
    assert got == status and set(reply) == {"error"} and words in reply["error"], reply


def test_an_internal_error_is_json_and_the_server_goes_on(one_model_server, monkeypatch):
    import onnxlrp.serve.app as app_module

    def broken(*args):
        raise RuntimeError("onnxruntime fell over")
    monkeypatch.setattr(app_module, "_explain", broken)
    status, reply = _post(one_model_server, {}, {"image": ("d.png", DIGIT)})
    assert status == 500 and set(reply) == {"error"} and "onnxruntime fell over" in reply["error"]
    monkeypatch.undo()
    assert _post(one_model_server, {}, {"image": ("d.png", DIGIT)})[0] == 200


def test_with_several_models_a_request_without_one_is_told_which(live_server):
    x = _sample()
    array = {"dtype": "float32", "shape": list(x.shape), "data": base64.b64encode(x.tobytes()).decode()}
    status, reply = _post(live_server, {"array": array})
    assert status == 422 and "'model'" in reply["error"]
    assert "digits_cnn" in reply["error"] and "digits_vit" in reply["error"]


def test_with_one_model_served_it_is_the_default(one_model_server):
    listing = json.load(urllib.request.urlopen(f"{one_model_server}/v1/models"))
    assert [m["name"] for m in listing["models"]] == ["digits_cnn"]
    status, reply = _post(one_model_server, {"raw": "true"}, {"image": ("four.png", DIGIT)})
    assert status == 200 and reply["model"] == "digits_cnn" and reply["target"] == 4
    expected = Explainer(str(DEMO / "digits_cnn.onnx")).explain(_sample()[None], target=4).relevance[0]
    np.testing.assert_allclose(np.load(io.BytesIO(base64.b64decode(reply["relevance_npy"]))), expected,
                               rtol=1e-5, atol=1e-7)
    x = _sample()
    array = {"dtype": "float32", "shape": list(x.shape), "data": base64.b64encode(x.tobytes()).decode()}
    status, reply = _post(one_model_server, {"array": array, "target": 7})          # JSON, no model either
    assert status == 200 and reply["target"] == 7
    status, reply = _post(one_model_server, {"model": "digits_vit"}, {"image": ("four.png", DIGIT)})
    assert status == 404 and "digits_vit" in reply["error"] and "served: digits_cnn" in reply["error"]


@pytest.mark.parametrize("digit", [4, 7])
def test_target_minus_one_is_the_predicted_class(live_server, digit):
    """-1 means the predicted class in the API as in Explainer.explain and the command line."""
    data = (DEMO / "digits" / f"test_{digit}.png").read_bytes()
    explainer = Explainer(str(DEMO / "digits_cnn.onnx"))
    sample = np.asarray(Image.open(io.BytesIO(data)), np.float32)[None, None] / 255
    predicted = int(np.argmax(explainer.logits(sample)[0]))
    for fields in ({"model": "digits_cnn", "target": "-1", "raw": "true"}, {"model": "digits_cnn", "raw": "true"}):
        status, reply = _post(live_server, fields, {"image": ("d.png", data)})
        assert status == 200 and reply["target"] == predicted, reply
        relevance = np.load(io.BytesIO(base64.b64decode(reply["relevance_npy"])))
        np.testing.assert_allclose(relevance, explainer.explain(sample, target=predicted).relevance[0],
                                   rtol=1e-5, atol=1e-7)


def test_the_docs_are_served_from_here(live_server):
    """/docs loads its script and style from this server (the browser test renders it, network cut)."""
    html = urllib.request.urlopen(f"{live_server}/docs").read().decode()
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(sources) >= 2 and all(s.startswith("/") for s in sources), sources
    for source in sources:
        assert urllib.request.urlopen(f"{live_server}{source}").status == 200


def test_a_language_model_answers_a_prompt_with_what_each_word_rests_on(live_server, tmp_path):
    """POST /v1/generate: the answer of Explainer.explain_generation, its matrix and tokens."""
    pytest.importorskip("tokenizers")
    listing = {m["name"]: m for m in json.load(urllib.request.urlopen(f"{live_server}/v1/models"))["models"]}
    assert listing["tiny_lm"]["kind"] == "generation" and listing["tiny_lm"]["composites"] == ["attn_lrp", "cp_lrp"]
    assert listing["sentiment"]["kind"] == "text" and "max_new_tokens" not in listing["sentiment"]
    status, reply = _post(live_server, {"model": "tiny_lm", "prompt": "the cat sat on the mat", "max_new_tokens": 5,
                                        "composite": "cp_lrp"}, path="/v1/generate")
    assert status == 200, reply
    P, ids = reply["prompt_length"], reply["ids"]
    assert P == 6 and len(reply["tokens"]) == len(ids) == P + len(reply["generated"])
    from decoder_model import write_decoder
    served = write_decoder(tmp_path / "tiny_lm")          # the served model, written again
    expected = Explainer(str(served), composite="cp_lrp").explain_generation(ids[:P], max_new_tokens=5)
    assert ids[P:] == expected.new_ids.tolist() and reply["stopped"] == expected.stopped
    np.testing.assert_allclose(np.asarray(reply["relevance"]), expected.relevance, rtol=1e-5, atol=1e-6)
    # the sentence flow still explains the next token of a language model
    status, reply = _post(live_server, {"model": "tiny_lm", "text": "the cat sat"})
    assert status == 200 and len(reply["tokens"]) == 3


@pytest.mark.parametrize("fields,status,words", [
    ({"model": "tiny_lm", "prompt": "  "}, 422, "non-empty"),
    ({"model": "tiny_lm", "prompt": "the cat", "max_new_tokens": 0}, 422, "between 1 and 100"),
    ({"model": "tiny_lm", "prompt": "the cat", "max_new_tokens": "many"}, 422, "integer"),
    ({"model": "tiny_lm", "prompt": "the cat", "composite": "epsilon_plus"}, 422, "not offered"),
    ({"model": "digits_cnn", "prompt": "the cat"}, 422, "not a language model"),
    ({"model": "nothing", "prompt": "the cat"}, 404, "no model"),
    ({"prompt": "the cat"}, 422, "no field 'model'"),
])
def test_bad_generate_requests_get_a_json_error(live_server, fields, status, words):
    pytest.importorskip("tokenizers")
    got, reply = _post(live_server, fields, path="/v1/generate")
    assert got == status and set(reply) == {"error"} and words in reply["error"], reply
    got, reply = _post(live_server, {}, body=b"prompt=x", kind="application/x-www-form-urlencoded",
                       path="/v1/generate")
    assert got == 415 and "application/json" in reply["error"]
