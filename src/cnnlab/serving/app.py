"""The web service: ``create_app(run_dir)`` returns a FastAPI app serving one trained run.

Endpoints: ``POST /predict`` (multipart field ``files``, one or more images; or JSON
``{"images": [base64, ...]}``; query ``top_k``), ``POST /explain`` (the same inputs and limits; query
``method``, ``target``: heatmap overlays, cnnlab.evaluation.explain), ``GET /health``, ``GET /metadata``, ``GET /``
(a page to drop an image on) and the OpenAPI schema at ``/openapi.json`` (no ``/docs`` page:
FastAPI's loads Swagger UI from a CDN).

The model is loaded once, when the app is created. Images are decoded by cnnlab's own rules
(cnnlab.data.decode, at the run's image size), so the service and ``cnnlab predict`` agree.
Every bad request gets a 4xx JSON body ``{"error": code, "detail": message}`` (errors.py).
Reading and decoding uploads (uploads.py) and admission control, the API key and the Host check
(guard.py) live in their own modules, so every endpoint that takes images shares them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse

from cnnlab.serving.batcher import MicroBatcher
from cnnlab.serving.errors import ApiError, install_handlers
from cnnlab.serving.guard import Admission, install_guards
from cnnlab.serving.uploads import ACCEPTED_TYPES, FALLBACK_SIZE  # noqa: F401 (ACCEPTED_TYPES: re-exported)
from cnnlab.serving.uploads import UploadLimits, UploadReader, default_max_pixels

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
    max_pixels: int | None = None,
    max_images: int = 64,
    timeout_s: float = 30.0,
    threads: int | None = None,
    max_request_pixels: int | None = None,
    max_in_flight: int = 16,
    decode_threads: int = 2,
    api_key: str | None = None,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """A FastAPI app serving ``run_dir`` with ``backend`` ("torch" or "onnxruntime"), through the
    predictor's one inference path (the same probabilities as ``cnnlab predict`` and ``evaluate``).

    ``max_pixels`` (per image) defaults to :func:`default_max_pixels` of the decode size,
    ``max_request_pixels`` to four times that; see uploads.py and guard.py for every limit."""
    from cnnlab.serving.model import ServedModel

    model = ServedModel(run_dir, backend, weights=weights, onnx_path=onnx_path, threads=threads)
    batcher = MicroBatcher(model.predict_logits, max_batch=max_batch, window_ms=batch_window_ms)
    card, classes = model.card, model.class_names
    # A run without a decode size is served at its model's input size (or FALLBACK_SIZE), never at
    # whatever size a client sends (the model resizes to its input size anyway).
    size = model.image_size or card["spec"].get("input_size") or FALLBACK_SIZE
    max_pixels = max_pixels or default_max_pixels(size)
    upload_limits = UploadLimits(max_upload_bytes, max_pixels, max_request_pixels or 4 * max_pixels, max_images)
    uploads = UploadReader(size, upload_limits, decode_threads)
    admission = Admission(max_in_flight)
    limits = {**upload_limits.to_dict(), "timeout_s": timeout_s, "max_in_flight": max_in_flight}

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        uploads.start()
        await batcher.start()
        yield
        await batcher.stop()
        uploads.close()

    # No /docs or /redoc: FastAPI's pages load Swagger UI / ReDoc from a CDN. /openapi.json stays.
    app = FastAPI(title="cnnlab", version=str(card.get("cnnlab_version", "")), lifespan=lifespan,
                  docs_url=None, redoc_url=None,
                  description=f"Image classification with the cnnlab run {Path(run_dir).name} "
                              f"({card['spec']['arch']}, {len(classes)} classes).")
    app.state.batcher, app.state.backend = batcher, model
    app.state.uploads, app.state.admission = uploads, admission
    install_handlers(app)
    install_guards(app, api_key=api_key, allowed_hosts=allowed_hosts)

    async def handle(request: Request, top_k: int) -> dict[str, Any]:
        async with admission.slot():
            names, images = await uploads.read_images(request)
            logits = await batcher.submit(images)
        probs = _softmax(logits.astype(np.float64))
        k = min(top_k, len(classes))
        preds = []
        for name, p in zip(names, probs):
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

    def explain_images(files: list[tuple[str, bytes]], images: np.ndarray, method: str,
                       target: str | None) -> dict[str, Any]:
        from PIL import Image

        from cnnlab.data.decode import to_original_xy, upright_size
        from cnnlab.errors import CnnlabError
        from cnnlab.evaluation.overlay import overlay, peak_xy, png_bytes
        from cnnlab.predictor import ImagePredictor

        if "predictor" not in explainer:
            explainer["predictor"] = ImagePredictor.load(run_dir, weights=weights)
        try:
            e = explainer["predictor"].explanation(images, target, method=method)
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
        async with admission.slot():  # the same reading, limits and decoding as /predict
            files = await uploads.read_files(request)
            images = await uploads.decode(files)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, explain_images, files, images, method, target)

    @app.post("/explain", summary="Class-activation heatmaps: an overlay PNG (base64), label, probability, peak",
              openapi_extra={"requestBody": PREDICT_BODY})
    async def explain(request: Request,
                      method: str = Query("gradcam", description="gradcam or occlusion (gradient-free)"),
                      target: str | None = Query(None, description="a class to explain (default: the predicted)")):
        try:  # heatmaps in fp32 with the run's torch model (cnnlab.evaluation.explain), whatever the backend
            return JSONResponse(await asyncio.wait_for(handle_explain(request, method, target), timeout_s))
        except TimeoutError:
            raise ApiError(503, "timeout", f"the request did not finish within {timeout_s:g} s") from None

    @app.get("/health", summary="Liveness, the backend and batching statistics")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": card["spec"]["arch"], "backend": model.name,
                "batching": {"max_batch": max_batch, "window_ms": batch_window_ms, **batcher.stats.to_dict()},
                "admission": admission.to_dict()}

    @app.get("/metadata", summary="Architecture, classes, input size, version and the request limits")
    async def metadata() -> dict[str, Any]:
        # What a client needs, nothing more: the card holds server paths (the training data's folder).
        return {"architecture": card["spec"]["arch"], "classes": classes, "num_classes": len(classes),
                "image_size": size, "model_input_size": card["spec"].get("input_size") or size,
                "cnnlab_version": str(card.get("cnnlab_version", "")), "backend": model.name,
                "input": "any image file; decoded to RGB, EXIF-rotated, shorter side resized to image_size "
                         "and centre-cropped (cnnlab.data.decode)",
                "limits": limits}

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
