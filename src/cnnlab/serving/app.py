"""The web service: ``create_app(run_dir)`` returns a FastAPI app serving one trained run.

Endpoints: ``POST /predict`` (multipart field ``files``, one or more images; or JSON
``{"images": [base64, ...]}``; query ``top_k``), ``POST /explain`` (the same inputs; query ``method``,
``target``: heatmap overlays, cnnlab.evaluation.explain), ``GET /health``, ``GET /metadata``, ``GET /``
(a page to drop an image on) and the OpenAPI docs at ``/docs``.

The model is loaded once, when the app is created. Images are decoded by cnnlab's own rules
(cnnlab.data.decode, at the run's image size), so the service and ``cnnlab predict`` agree.
Every bad request gets a 4xx JSON body ``{"error": code, "detail": message}`` (errors.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse

from cnnlab.errors import DataError
from cnnlab.serving.batcher import MicroBatcher
from cnnlab.serving.errors import ApiError, install_handlers

#: Content types accepted for an uploaded image part (octet-stream: what curl sends for unknown files).
ACCEPTED_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/webp", "image/bmp", "image/gif",
                            "image/tiff", "image/x-portable-pixmap", "application/octet-stream", ""})
DECODE_INLINE_BYTES = 64 * 1024  # larger uploads are decoded in a thread, off the event loop

PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
        "application/json": {"schema": {"type": "object", "required": ["images"], "properties": {
            "images": {"type": "array", "items": {"type": "string", "format": "byte"},
                       "description": "base64 image files (a data: URL prefix is allowed)"}}}},
    },
}


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def create_app(
    run_dir: str | Path,
    backend: str = "torch",
    *,
    weights: str = "final",
    onnx_path: str | Path | None = None,
    max_batch: int = 32,
    batch_window_ms: float = 2.0,
    max_upload_bytes: int = 10 * 1024 * 1024,
    max_pixels: int = 40_000_000,
    max_images: int = 64,
    timeout_s: float = 30.0,
    threads: int | None = None,
) -> FastAPI:
    """A FastAPI app serving ``run_dir`` with ``backend`` ("torch" or "onnxruntime"), through the
    predictor's one inference path (the same probabilities as ``cnnlab predict`` and ``evaluate``)."""
    from cnnlab.serving.model import ServedModel

    model = ServedModel(run_dir, backend, weights=weights, onnx_path=onnx_path, threads=threads)
    batcher = MicroBatcher(model.predict_logits, max_batch=max_batch, window_ms=batch_window_ms)
    card, classes, size = model.card, model.class_names, model.image_size
    limits = {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels, "max_images": max_images,
              "timeout_s": timeout_s, "accepted_content_types": sorted(t for t in ACCEPTED_TYPES if t)}

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="cnnlab", version=str(card.get("cnnlab_version", "")), lifespan=lifespan,
                  description=f"Image classification with the cnnlab run {Path(run_dir).name} "
                              f"({card['spec']['arch']}, {len(classes)} classes).")
    app.state.batcher, app.state.backend = batcher, model
    install_handlers(app)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ApiError(400, "bad_request", "Content-Length is not a number")
            if int(declared) > max_upload_bytes:
                raise ApiError(413, "too_large", f"request body of {int(declared):,} bytes exceeds the "
                                                 f"limit of {max_upload_bytes:,} bytes")
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_upload_bytes:
                raise ApiError(413, "too_large", f"request body exceeds the limit of {max_upload_bytes:,} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        if not body:
            raise ApiError(400, "empty_body", "empty request body; send images as multipart field 'files' "
                                              "or JSON {\"images\": [base64, ...]}")
        return body

    async def files_from_multipart(request: Request, body: bytes) -> list[tuple[str, bytes]]:
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=max_images + 1, max_fields=100)
        except Exception as exc:  # starlette raises HTTPException / MultiPartException here
            detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
            raise ApiError(400, "bad_multipart", f"malformed multipart body ({detail})") from None
        uploads = form.getlist("files")
        if not uploads:
            other = sorted(set(form.keys()))
            hint = f" (got field{'s' if len(other) > 1 else ''} {', '.join(map(repr, other))})" if other else ""
            raise ApiError(400, "missing_field", f"no images: send them as multipart field 'files'{hint}")
        out = []
        for i, up in enumerate(uploads):
            label = f"files[{i}]"
            if isinstance(up, str) or not hasattr(up, "read"):
                raise ApiError(400, "wrong_field", f"{label}: field 'files' must be a file upload, not text")
            name = f"{label} ({up.filename})" if up.filename else label
            ctype = (up.content_type or "").split(";")[0].strip().lower()
            if ctype not in ACCEPTED_TYPES:
                raise ApiError(415, "unsupported_type", f"{name}: content type {ctype!r} is not accepted "
                                                        f"(accepted: {', '.join(limits['accepted_content_types'])})")
            out.append((name, await up.read()))
        await form.close()
        return out

    def files_from_json(body: bytes) -> list[tuple[str, bytes]]:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "bad_json", f"body is not valid JSON ({exc})") from None
        if not isinstance(doc, dict) or "images" not in doc:
            raise ApiError(400, "missing_field", "JSON body must be an object with a list 'images' of base64 strings")
        images = doc["images"]
        if not isinstance(images, list) or not images:
            raise ApiError(400, "wrong_field", "'images' must be a non-empty list of base64 strings")
        out = []
        for i, item in enumerate(images):
            if not isinstance(item, str):
                raise ApiError(400, "wrong_field", f"images[{i}]: must be a base64 string, got {type(item).__name__}")
            text = item.split(",", 1)[1] if item.startswith("data:") and "," in item else item
            try:
                data = base64.b64decode("".join(text.split()), validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, "bad_base64", f"images[{i}]: not valid base64") from None
            out.append((f"images[{i}]", data))
        return out

    def decode(name: str, data: bytes) -> np.ndarray:
        from cnnlab.data.decode import decode_image

        try:
            return decode_image(data, size, name=name, max_pixels=max_pixels)
        except DataError as exc:
            if "decompression bomb" in str(exc):
                raise ApiError(413, "too_many_pixels", str(exc)) from None
            raise ApiError(400, "not_an_image" if "not an image" in str(exc) else "bad_image", str(exc)) from None

    async def handle(request: Request, top_k: int) -> dict[str, Any]:
        body = await read_body(request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            files = await files_from_multipart(request, body)
        elif ctype == "application/json":
            files = files_from_json(body)
        else:
            raise ApiError(415, "unsupported_media_type",
                           f"Content-Type {ctype or '(none)'!r}: send multipart/form-data (field 'files') "
                           "or application/json ({\"images\": [base64, ...]})")
        if len(files) > max_images:
            raise ApiError(413, "too_many_images", f"{len(files)} images in one request; the limit is {max_images}")
        loop = asyncio.get_running_loop()
        arrays = []
        for name, data in files:
            if len(data) > DECODE_INLINE_BYTES:
                arrays.append(await loop.run_in_executor(None, decode, name, data))
            else:
                arrays.append(decode(name, data))
        logits = await batcher.submit(np.stack(arrays))
        probs = _softmax(logits.astype(np.float64))
        k = min(top_k, len(classes))
        preds = []
        for (name, _), p in zip(files, probs):
            order = np.argsort(-p, kind="stable")[:k]
            preds.append({"image": name, "top": [{"label": classes[i], "probability": float(p[i])} for i in order]})
        return {"model": card["spec"]["arch"], "backend": model.name, "predictions": preds}

    @app.post("/predict", summary="Top-k labels for one or more images", openapi_extra={"requestBody": PREDICT_BODY})
    async def predict(request: Request, top_k: int = Query(5, ge=1, le=1000, description="labels per image")):
        try:  # a plain JSONResponse: the result is already JSON types (skips FastAPI's encoder)
            return JSONResponse(await asyncio.wait_for(handle(request, top_k), timeout_s))
        except TimeoutError:
            raise ApiError(503, "timeout", f"the request did not finish within {timeout_s:g} s") from None

    explainer: dict[str, Any] = {}  # the torch predictor /explain uses, loaded on its first request

    def explain_arrays(files: list[tuple[str, bytes]], arrays: list[np.ndarray], method: str,
                       target: str | None) -> dict[str, Any]:
        from cnnlab.data.decode import to_original_xy, upright_size
        from cnnlab.errors import CnnlabError
        from cnnlab.evaluation.overlay import overlay, peak_xy, png_bytes
        from cnnlab.predictor import ImagePredictor
        from PIL import Image

        if "predictor" not in explainer:
            explainer["predictor"] = ImagePredictor.load(run_dir, weights=weights)
        pred = explainer["predictor"]
        try:
            e = pred.explanation(np.stack(arrays), target, method=method)
        except CnnlabError as exc:
            raise ApiError(400, "bad_request", str(exc)) from None
        out = []
        for i, (name, data) in enumerate(files):
            x, y = to_original_xy(*peak_xy(e.heatmaps[i]), upright_size(data), size)
            png = png_bytes(Image.fromarray(overlay(e.images[i], e.heatmaps[i])))
            out.append({"image": name, "label": e.labels[i], "probability": e.probabilities[i], "peak": [x, y],
                        "overlay_png": base64.b64encode(png).decode("ascii")})
        return {"model": card["spec"]["arch"], "method": method, "layer": e.layer, "explanations": out}

    async def handle_explain(request: Request, method: str, target: str | None) -> dict[str, Any]:
        body = await read_body(request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in ("multipart/form-data", "application/json"):
            raise ApiError(415, "unsupported_media_type", f"Content-Type {ctype or '(none)'!r}: send "
                           "multipart/form-data (field 'files') or application/json ({\"images\": [base64, ...]})")
        files = await files_from_multipart(request, body) if ctype == "multipart/form-data" else files_from_json(body)
        if len(files) > max_images:
            raise ApiError(413, "too_many_images", f"{len(files)} images in one request; the limit is {max_images}")
        loop = asyncio.get_running_loop()
        arrays = [await loop.run_in_executor(None, decode, name, data) for name, data in files]
        return await loop.run_in_executor(None, explain_arrays, files, arrays, method, target)

    @app.post("/explain", summary="Class-activation heatmaps: an overlay PNG (base64), label, probability, peak",
              openapi_extra={"requestBody": PREDICT_BODY})
    async def explain(request: Request,
                      method: str = Query("gradcam", description="gradcam or occlusion (gradient-free)"),
                      target: str | None = Query(None, description="a class to explain (default: the predicted)")):
        try:  # the same inputs and limits as /predict; heatmaps in fp32 with the torch model
            return JSONResponse(await asyncio.wait_for(handle_explain(request, method, target), timeout_s))
        except TimeoutError:
            raise ApiError(503, "timeout", f"the request did not finish within {timeout_s:g} s") from None

    @app.get("/health", summary="Liveness, the backend and batching statistics")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": card["spec"]["arch"], "backend": model.name,
                "batching": {"max_batch": max_batch, "window_ms": batch_window_ms, **batcher.stats.to_dict()}}

    @app.get("/metadata", summary="Classes, input size and the model card")
    async def metadata() -> dict[str, Any]:
        return {"classes": classes, "num_classes": len(classes), "image_size": size,
                "model_input_size": card["spec"].get("input_size") or size, "backend": model.name,
                "input": "any image file; decoded to RGB, EXIF-rotated, shorter side resized to image_size "
                         "and centre-cropped (cnnlab.data.decode)",
                "limits": limits, "model_card": card}

    page = (Path(__file__).parent / "page.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, summary="A page to try the model in a browser")
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    return app


#: Environment variable holding create_app's arguments as JSON, for ``uvicorn --workers N``.
CONFIG_ENV = "CNNLAB_SERVE_CONFIG"


def app_from_env() -> FastAPI:
    """uvicorn factory (one per worker process): the app described by ``$CNNLAB_SERVE_CONFIG``."""
    import torch

    cfg = json.loads(os.environ[CONFIG_ENV])
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    return create_app(**cfg)
