"""The JSON API and the page. Every request names a served model; nothing a request says becomes a path.

    GET  /                 the page (static/index.html)
    GET  /static/<asset>   its script and style, bundled
    GET  /v1/models        the served models: input, classes, composites, modes
    POST /v1/explain       an image upload (multipart field `image`) or a base64 array (JSON), the model,
                           target or top_k, composite and its parameters, mode; returns the target, the
                           scores, a relevance summary and the heatmap and overlay as PNG data URLs (with
                           raw=true also the relevance as a base64 .npy)
    GET  /docs             OpenAPI docs (FastAPI's)
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError

from ..errors import OnnxLrpError
from ..heatmap import colorize, relevance_map
from ..pictures import input_image, overlay
from .models import MODES, load_served, relevance_summary

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
MAX_UPLOAD = 8 * 1024**2
MAX_PIXELS = 4096 * 4096


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def create_app(model_paths: list[str], max_upload: int = MAX_UPLOAD, tokenizers: dict | None = None) -> FastAPI:
    served = load_served(model_paths, tokenizers)
    app = FastAPI(title="onnxlrp", description="Layer-wise Relevance Propagation for ONNX models: explain an "
                  "image with a served model.", version="1")

    @app.exception_handler(RequestError)
    async def request_error(request, exc: RequestError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(OnnxLrpError)
    async def onnxlrp_error(request, exc: OnnxLrpError):
        return JSONResponse({"error": str(exc)}, status_code=422)

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

    @app.post("/v1/explain")
    async def explain(request: Request):
        """Explain one image. Multipart form: `image` (PNG/JPEG/...) and the fields below; or JSON:
        {"model", "array": {"dtype", "shape", "data": base64}, ...}. Fields: model, target (int) or top_k,
        composite, params (JSON object: epsilon, gamma, low, high), mode (logit, prob, contrastive, one),
        raw (true: also the relevance as a base64 .npy)."""
        fields, sample = await _read_request(request, served, max_upload)
        return _explain(served, fields, sample)

    app.state.served = served
    return app


async def _read_request(request, served, max_upload: int):
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_upload:
        raise RequestError(413, f"the request is {int(declared)} bytes; uploads are limited to {max_upload}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_upload:
            raise RequestError(413, f"the request is over {max_upload} bytes, the upload limit")
    kind = request.headers.get("content-type", "")
    if kind.startswith("application/json"):
        try:
            fields = json.loads(body or b"{}")
        except ValueError:
            raise RequestError(400, "the body is not valid JSON") from None
        if not isinstance(fields, dict):
            raise RequestError(400, "the JSON body must be an object")
        model = _model(served, fields.get("model"))
        if model.kind == "text":
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
    if not isinstance(name, str) or name not in served:
        raise RequestError(404, f"no model {name!r}; served: {', '.join(served)}")
    return served[name]


def _image(data: bytes, model) -> np.ndarray:
    shape = model.input_shape
    last = shape[-1] in (1, 3) and shape[1] not in (1, 3)
    channels, height, width = (shape[3], shape[1], shape[2]) if last else (shape[1], shape[2], shape[3])
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise RequestError(413, f"the image is {image.width} x {image.height} pixels; at most {MAX_PIXELS}")
            image = image.convert("L" if channels == 1 else "RGB")
            if height and width:
                image = image.resize((width, height), Image.BILINEAR)
            array = np.asarray(image, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise RequestError(415, "the upload is not an image onnxlrp can read (PNG, JPEG, GIF, BMP, WebP, ...)") from None
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
    mode = fields.get("mode") or "logit"
    if mode not in MODES:
        raise RequestError(422, f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    target, top_k = _int(fields, "target"), _int(fields, "top_k", min(5, model.classes))
    if target is not None and not 0 <= target < model.classes:
        raise RequestError(422, f"target {target} out of range: model '{model.name}' has {model.classes} classes")
    if not 1 <= top_k <= model.classes:
        raise RequestError(422, f"top_k must be between 1 and {model.classes}")
    explainer = model.explainer(composite, params)
    if model.kind == "text":
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
    encoded = encode(model.tokenizer, text, explainer.compiled().inputs)
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


def _png_url(image) -> str:
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    if image.width < 128:   # small inputs: enlarged without blurring, so the page shows them crisply
        scale = -(-128 // image.width)
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
