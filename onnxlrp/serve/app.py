"""The JSON API and the page. Every request names a served model; nothing a request says becomes a path.

    GET  /                 the page (static/index.html)
    GET  /static/<asset>   its script and style, bundled
    GET  /v1/models        the served models: input, classes, composites, modes
    POST /v1/explain       an image upload (multipart field `image`) or a base64 array (JSON), the model,
                           target or top_k, composite and its parameters, mode; returns the target, the
                           scores, a relevance summary and the heatmap and overlay as PNG data URLs (with
                           raw=true also the relevance as a base64 .npy)
    POST /v1/generate      a language model's greedy answer to a prompt (JSON: model, prompt, max_new_tokens,
                           composite), with the relevance of every token for every new token
    GET  /docs             OpenAPI docs: Swagger UI, its script and style bundled (fastapi-offline)

Every error, ours or the framework's (unknown path, wrong method), answers {"error": "..."}.
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..errors import InputError, OnnxLrpError
from ..heatmap import colorize, relevance_map
from ..inputs import ImageTooLarge, open_image
from ..pictures import input_image, overlay
from .models import MAX_NEW_TOKENS, MODES, load_served, relevance_summary

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {"app.js": "text/javascript", "style.css": "text/css", "answer.js": "text/javascript",
          "answer.css": "text/css"}
MAX_UPLOAD = 8 * 1024**2


def _explain_docs(served) -> dict:
    """What POST /v1/explain takes, for /docs (the handler reads the body itself, so FastAPI cannot see it).
    Every default is one the server accepts, so that /docs' "Try it out" works as it comes."""
    composites = sorted({name for model in served.values() for name in model.composites()})
    fields = {
        "model": {"type": "string", "enum": list(served), "default": next(iter(served)),
                  "description": "a served model; may be left out when one is served"},
        "target": {"type": "integer", "default": -1, "description": "the class to explain; -1: the predicted class"},
        "top_k": {"type": "integer", "default": 5, "description": "how many scores to return"},
        "composite": {"type": "string", "default": "", "description": "one of the model's composites (GET "
                      f"/v1/models; here {', '.join(composites)}); left out: its first"},
        "mode": {"type": "string", "enum": list(MODES), "default": "logit"},
        "raw": {"type": "boolean", "default": False, "description": "also the relevance as a base64 .npy"},
    }
    form = {"image": {"type": "string", "format": "binary", "description": "PNG, JPEG, GIF, BMP, WebP, ..."},
            **fields, "params": {"type": "string", "default": "{}",
                                 "description": 'the composite\'s numbers as a JSON object, e.g. {"gamma": 0.5}'}}
    array = {"type": "object", "description": "one sample, without the batch axis", "properties": {
        "dtype": {"type": "string", "enum": ["float32", "float64", "uint8"]},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "data": {"type": "string", "description": "base64 of the array's bytes"}}}
    body = {"array": array, "text": {"type": "string", "description": "text models: the sentence"}, **fields,
            "params": {"type": "object", "additionalProperties": {"type": "number"}}}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": form}},
        "application/json": {"schema": {"type": "object", "properties": body}}}}}


ERROR_DOCS = {status: {"description": meaning, "content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}}}}}} for status, meaning in [
    (400, "a malformed body or form"), (404, "no such model"), (413, "over the upload limit"),
    (415, "not an image"), (422, "a field out of range, or no model named where several are served")]}


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def create_app(model_paths: list[str], max_upload: int = MAX_UPLOAD, tokenizers: dict | None = None) -> FastAPI:
    served = load_served(model_paths, tokenizers)
    # FastAPI's own /docs loads Swagger UI from a CDN: a blank page offline. No /redoc: ReDoc fetches its
    # logo from a CDN even when bundled
    app = FastAPIOffline(title="onnxlrp", description="Layer-wise Relevance Propagation for ONNX models: explain "
                         "an image or a sentence with a served model.", version="1", redoc_url=None)

    @app.exception_handler(RequestError)
    async def request_error(request, exc: RequestError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(OnnxLrpError)
    async def onnxlrp_error(request, exc: OnnxLrpError):
        return JSONResponse({"error": str(exc)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return JSONResponse({"error": _http_message(request, exc)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(request, exc: Exception):
        # a bug of ours, or onnxruntime failing: still JSON, and the server goes on serving
        return JSONResponse({"error": f"internal error ({type(exc).__name__}: {exc}); the server goes on serving"},
                            status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/static/{asset}", include_in_schema=False)
    async def static(asset: str):
        if asset not in ASSETS:
            raise RequestError(404, f"no asset '{asset}'")
        return FileResponse(STATIC / asset, media_type=ASSETS[asset])

    @app.get("/v1/models")
    async def models():
        """The served models, with what each takes."""
        return {"models": [model.describe() for model in served.values()]}

    @app.post("/v1/explain", openapi_extra=_explain_docs(served), responses=ERROR_DOCS)
    async def explain(request: Request):
        """Explain one image. Multipart form: `image` (PNG/JPEG/...) and the fields below; or JSON:
        {"model", "array": {"dtype", "shape", "data": base64}, ...}; a text model takes {"model", "text"}.
        Fields: model (may be left out when one model is served), target (a class; -1 or left out: the
        predicted class), top_k, composite, params (JSON object: epsilon, gamma, low, high), mode (logit,
        prob, contrastive, one), raw (true: also the relevance as a base64 .npy)."""
        fields, sample = await _read_request(request, served, max_upload)
        return _explain(served, fields, sample)

    @app.post("/v1/generate", openapi_extra=_generate_docs(served), responses=ERROR_DOCS)
    async def generate(request: Request):
        """A language model's greedy answer to a prompt, and what it rests on. JSON: {"model", "prompt",
        "max_new_tokens" (default 20), "composite" (attn_lrp or cp_lrp)}. The reply: the tokens of the prompt
        and the answer (text, token, id), prompt_length, answer (its text), stopped ("eos" or
        "max_new_tokens"), generated (per new token: logit, probability, relevance_sum) and relevance, a
        [new tokens][all tokens] matrix: row t, every token's relevance for new token t."""
        fields = await _read_json(request, max_upload)
        return await run_in_threadpool(_generate, served, fields)   # seconds of work: the server goes on answering

    app.state.served = served
    return app


def _generate_docs(served) -> dict:
    """What POST /v1/generate takes, for /docs; the defaults are accepted as they come."""
    generating = [name for name, model in served.items() if model.generates]
    fields = {
        "model": {"type": "string", "enum": generating or list(served), "default": (generating or list(served))[0],
                  "description": "a served language model; may be left out when one model is served"},
        "prompt": {"type": "string", "default": "the", "description": "the text the answer continues"},
        "max_new_tokens": {"type": "integer", "default": 20, "minimum": 1, "maximum": MAX_NEW_TOKENS},
        "composite": {"type": "string", "enum": ["attn_lrp", "cp_lrp"], "default": "attn_lrp"},
    }
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["prompt"], "properties": fields}}}}}


def _http_message(request, exc: HTTPException) -> str:
    if exc.status_code == 404:
        return (f"no page or endpoint at {request.url.path}: the page is at /, the API at GET /v1/models, "
                "POST /v1/explain and POST /v1/generate, its docs at /docs")
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        return f"{request.method} is not allowed on {request.url.path}" + (f"; use {allowed}" if allowed else "")
    return str(exc.detail)


async def _body(request, max_upload: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_upload:
        raise RequestError(413, f"the request is {int(declared)} bytes; uploads are limited to {max_upload}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_upload:
            raise RequestError(413, f"the request is over {max_upload} bytes, the upload limit")
    return body


def _json_object(body: bytes) -> dict:
    try:
        fields = json.loads(body or b"{}")
    except ValueError:
        raise RequestError(400, "the body is not valid JSON") from None
    if not isinstance(fields, dict):
        raise RequestError(400, "the JSON body must be an object")
    return fields


async def _read_json(request, max_upload: int) -> dict:
    body = await _body(request, max_upload)
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise RequestError(415, "send application/json: {\"model\": ..., \"prompt\": ..., \"max_new_tokens\": ...}")
    return _json_object(body)


async def _read_request(request, served, max_upload: int):
    body = await _body(request, max_upload)
    kind = request.headers.get("content-type", "")
    if kind.startswith("application/json"):
        fields = _json_object(body)
        model = _model(served, fields.get("model"))
        if model.kind in ("text", "generation"):
            return fields, _text(fields.get("text"))
        return fields, _array(fields.get("array"), model)
    if kind.startswith("multipart/form-data"):
        from starlette.datastructures import UploadFile
        from starlette.formparsers import MultiPartParser

        async def replay():
            yield body
        try:
            form = await MultiPartParser(request.headers, replay(), max_part_size=max_upload).parse()
        except Exception as exc:  # noqa: BLE001 - python-multipart's own errors
            raise RequestError(400, f"the form cannot be read: {exc}") from None
        fields = {k: v for k, v in form.items() if not isinstance(v, UploadFile)}
        if isinstance(fields.get("params"), str):
            try:
                fields["params"] = json.loads(fields["params"] or "{}")
            except ValueError:
                raise RequestError(400, "params must be a JSON object") from None
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise RequestError(400, "the form has no file field 'image'")
        model = _model(served, fields.get("model"))
        return fields, _image(await upload.read(), model)
    raise RequestError(415, "send multipart/form-data with an image, or application/json with a base64 array")


def _model(served, name):
    if name in (None, ""):
        if len(served) == 1:                # one model served: it is the default
            return next(iter(served.values()))
        raise RequestError(422, f"the request has no field 'model'; this server has several: {', '.join(served)}")
    if not isinstance(name, str) or name not in served:
        raise RequestError(404, f"no model {name!r}; served: {', '.join(served)}")
    return served[name]


def _image(data: bytes, model) -> np.ndarray:
    shape = model.input_shape
    last = shape[-1] in (1, 3) and shape[1] not in (1, 3)
    channels, height, width = (shape[3], shape[1], shape[2]) if last else (shape[1], shape[2], shape[3])
    unreadable = RequestError(415, "the upload is not an image onnxlrp can read (PNG, JPEG, GIF, BMP, WebP, ...)")
    try:
        with open_image(io.BytesIO(data), "the upload") as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if height and width:
                image = image.resize((width, height), Image.BILINEAR)
            array = np.asarray(image, dtype=np.float32) / 255.0
    except ImageTooLarge as exc:
        raise RequestError(413, str(exc)) from None
    except (InputError, OSError, ValueError):
        raise unreadable from None
    array = array[..., None] if array.ndim == 2 else array
    return array if last else np.ascontiguousarray(array.transpose(2, 0, 1))


def _array(spec, model) -> np.ndarray:
    if not isinstance(spec, dict) or not {"dtype", "shape", "data"} <= set(spec):
        raise RequestError(400, "give 'array': {\"dtype\": \"float32\", \"shape\": [...], \"data\": base64}")
    if spec["dtype"] not in ("float32", "float64", "uint8"):
        raise RequestError(400, f"array dtype must be float32, float64 or uint8; got {spec['dtype']!r}")
    try:
        raw = base64.b64decode(spec["data"], validate=True)
        shape = tuple(int(d) for d in spec["shape"])
        array = np.frombuffer(raw, dtype=spec["dtype"]).reshape(shape).astype(np.float32)
    except (ValueError, TypeError):
        raise RequestError(400, "the array's data is not base64 of its dtype and shape") from None
    expected = tuple(model.input_shape[1:])
    if array.shape != expected:
        raise RequestError(422, f"the array has shape {list(array.shape)}; model '{model.name}' takes one sample "
                           f"shaped {list(expected)}")
    return array


def _text(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RequestError(422, "a text model takes 'text': a non-empty sentence")
    if len(value) > 10000:
        raise RequestError(413, "the text is over 10000 characters")
    return value


def _int(fields, key, default=None):
    value = fields.get(key, default)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise RequestError(422, f"{key} must be an integer; got {value!r}") from None


def _explain(served, fields: dict, sample: np.ndarray) -> dict:
    model = _model(served, fields.get("model"))
    composite = fields.get("composite") or model.composites()[0]
    params = fields.get("params") or {}
    if not isinstance(params, dict):
        raise RequestError(422, "params must be a JSON object of numbers")
    try:
        params = {k: float(v) for k, v in params.items()}
    except (TypeError, ValueError):
        raise RequestError(422, "params must be numbers") from None
    if composite in model.composites():
        params = {**model.params(composite), **params}   # the reply says every parameter used
    mode = fields.get("mode") or "logit"
    if mode not in MODES:
        raise RequestError(422, f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    target, top_k = _int(fields, "target"), _int(fields, "top_k", min(5, model.classes))
    if target is not None and not -1 <= target < model.classes:   # -1: the predicted class, as in Explainer.explain
        raise RequestError(422, f"target {target} out of range: model '{model.name}' has {model.classes} classes "
                           f"(0..{model.classes - 1}; -1: the predicted class)")
    if not 1 <= top_k <= model.classes:
        raise RequestError(422, f"top_k must be between 1 and {model.classes}")
    explainer = model.explainer(composite, params)
    if model.kind in ("text", "generation"):
        return _explain_text(model, explainer, sample, target, top_k, mode, composite, params)
    x = sample[None]
    scores = explainer.logits(x)[0]
    result = explainer.explain(x, target=target, mode=mode)
    explained = int(result.target[0])
    relevance = result.relevance[0]
    channel_axis = -1 if model.describe()["input"]["layout"] == "NHWC" else 0
    probabilities = np.exp(scores - scores.max())
    probabilities /= probabilities.sum()
    order = np.argsort(-scores, kind="stable")[:top_k]
    reply = {"model": model.name, "composite": composite, "params": params, "mode": mode, "target": explained,
             "scores": [{"class": int(c), "logit": float(scores[c]), "probability": float(probabilities[c])}
                        for c in order],
             "relevance": relevance_summary(relevance, float(scores[explained]) if mode == "logit" else None),
             "heatmap": _png_url(colorize(relevance_map(relevance, channel_axis))),
             "input": _png_url((input_image(sample, channel_axis) * 255).round().astype(np.uint8)),
             "overlay": _png_url(overlay(relevance, sample, channel_axis))}
    if str(fields.get("raw", "")).lower() in ("1", "true", "yes"):
        buffer = io.BytesIO()
        np.save(buffer, relevance)
        reply["relevance_npy"] = base64.b64encode(buffer.getvalue()).decode()
    return reply


def _explain_text(model, explainer, text: str, target, top_k, mode, composite, params) -> dict:
    """A sentence: its tokens with their relevance (a sequence output: the next token after it)."""
    from ..text import encode
    encoded = encode(model.tokenizer, text, explainer.compiled().inputs, explainer.decoder.fillable)
    scores = explainer.logits(encoded.feeds)[0]
    scores = scores[-1] if scores.ndim == 2 else scores        # an LM: the scores at the last position
    result = explainer.explain(encoded.feeds, target=target, mode=mode)
    explained = int(np.ravel(result.target)[0])
    relevance = result.relevance[0]
    probabilities = np.exp(scores - scores.max())
    probabilities /= probabilities.sum()
    order = np.argsort(-scores, kind="stable")[:top_k]
    label = model.tokenizer.id_to_token if scores.shape[0] > 100 else (lambda c: None)
    return {"model": model.name, "composite": composite, "params": params, "mode": mode, "target": explained,
            "scores": [{"class": int(c), "logit": float(scores[c]), "probability": float(probabilities[c]),
                        "token": label(int(c))} for c in order],
            "relevance": relevance_summary(relevance, float(scores[explained]) if mode == "logit" else None),
            "tokens": [{"token": t, "relevance": float(r)} for t, r in zip(encoded.tokens, relevance)]}


def _generate(served, fields: dict) -> dict:
    from ..generation_page import generation_table

    model = _model(served, fields.get("model"))
    if not model.generates:
        raise RequestError(422, f"model '{model.name}' is not a language model ([batch, seq, vocab] logits with its "
                           "tokenizer): it does not generate; POST /v1/explain explains it")
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError(422, "give 'prompt': a non-empty text for the model to continue")
    if len(prompt) > 10000:
        raise RequestError(413, "the prompt is over 10000 characters")
    max_new_tokens = _int(fields, "max_new_tokens", 20)
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise RequestError(422, f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}; got {max_new_tokens}")
    composite = fields.get("composite") or model.composites()[0]
    explainer = model.explainer(composite, {})
    ids = model.tokenizer.encode(prompt).ids
    if not ids:
        raise RequestError(422, f"the tokenizer made no tokens of {prompt!r}")
    generation = explainer.explain_generation(ids, max_new_tokens=max_new_tokens)
    return generation_table(generation, model.tokenizer, prompt=prompt, model=model.name, composite=composite)


def _png_url(image) -> str:
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    if image.width < 128:   # small inputs: enlarged without blurring, so the page shows them crisply
        scale = -(-128 // image.width)
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
