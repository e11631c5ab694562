"""Reading a request's images: body -> files -> header checks -> decoded pixels, never on the event loop.

Every endpoint that takes images uses :class:`UploadReader` (``read_images``), so one set of limits
holds everywhere:

- the body: at most ``max_upload_bytes`` (Content-Length checked first, then while streaming);
- the count: at most ``max_images`` per request, counted before anything is base64-decoded;
- each image's pixels, read from its header (Pillow opens lazily; nothing is decoded yet): at most
  ``max_pixels``; and all the request's images together: at most ``max_request_pixels``;
- decoding runs in small thread pools, so the event loop keeps answering (``/health`` included)
  while images decode: images of up to ``SMALL_PIXELS`` in ``decode_threads`` threads, larger ones
  in one thread of their own, so ordinary uploads never queue behind large ones (or pixel bombs
  just under the limit), and the memory held by large decodes in progress is bounded by one
  ``max_pixels`` image; JPEGs decode in draft mode (cnnlab.data.decode).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Request

from cnnlab.errors import DataError
from cnnlab.serving.errors import ApiError

#: Content types accepted for an uploaded image part (octet-stream: what curl sends for unknown files).
ACCEPTED_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/webp", "image/bmp", "image/gif",
                            "image/tiff", "image/x-portable-pixmap", "application/octet-stream", ""})

#: The decode size used when a run records none: uploads are never decoded at any size a client sends.
FALLBACK_SIZE = 224
#: Images up to this many pixels (a 12-megapixel photo is 12 M) decode in the main lane; larger ones
#: in a one-thread lane of their own.
SMALL_PIXELS = 1_000_000


def default_max_pixels(size: int | None) -> int:
    """Per-image pixel limit tied to the model's input size: 64x its pixels, within 4 M .. 16 M."""
    side = size or FALLBACK_SIZE
    return int(min(16_000_000, max(4_000_000, 64 * side * side)))


@dataclass
class UploadLimits:
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 4_000_000
    max_request_pixels: int = 16_000_000
    max_images: int = 64

    def to_dict(self) -> dict[str, Any]:
        return {"max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels,
                "max_request_pixels": self.max_request_pixels, "max_images": self.max_images,
                "accepted_content_types": sorted(t for t in ACCEPTED_TYPES if t)}


def _decode_error(exc: DataError) -> ApiError:
    text = str(exc)
    if "decompression bomb" in text:
        return ApiError(413, "too_many_pixels", text)
    return ApiError(400, "not_an_image" if "not an image" in text else "bad_image", text)


class UploadReader:
    """The images of a request as one ``(N, size, size, 3)`` uint8 array; see the module's docstring."""

    def __init__(self, size: int, limits: UploadLimits, decode_threads: int = 2):
        self.size, self.limits, self.decode_threads = size, limits, max(1, decode_threads)
        self.start()

    def start(self) -> None:
        """(Re)create the decode pools (an app's lifespan may run more than once, e.g. in tests)."""
        if getattr(self, "pool", None) is None:
            self.pool = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="cnnlab-decode")
            self.large_pool = ThreadPoolExecutor(1, thread_name_prefix="cnnlab-decode-large")

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.large_pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self.large_pool = None  # type: ignore[assignment]

    async def read_body(self, request: Request) -> bytes:
        limit = self.limits.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ApiError(400, "bad_request", "Content-Length is not a number")
            if int(declared) > limit:
                raise ApiError(413, "too_large", f"request body of {int(declared):,} bytes exceeds the "
                                                 f"limit of {limit:,} bytes")
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise ApiError(413, "too_large", f"request body exceeds the limit of {limit:,} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        if not body:
            raise ApiError(400, "empty_body", "empty request body; send images as multipart field 'files' "
                                              "or JSON {\"images\": [base64, ...]}")
        return body

    async def files_from_multipart(self, request: Request, body: bytes) -> list[tuple[str, bytes]]:
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=self.limits.max_images + 1, max_fields=100)
        except Exception as exc:  # starlette raises HTTPException / MultiPartException here
            detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
            raise ApiError(400, "bad_multipart", f"malformed multipart body ({detail})") from None
        uploads = form.getlist("files")
        if not uploads:
            other = sorted(set(form.keys()))
            hint = f" (got field{'s' if len(other) > 1 else ''} {', '.join(map(repr, other))})" if other else ""
            raise ApiError(400, "missing_field", f"no images: send them as multipart field 'files'{hint}")
        self.check_count(len(uploads))
        out = []
        for i, up in enumerate(uploads):
            label = f"files[{i}]"
            if isinstance(up, str) or not hasattr(up, "read"):
                raise ApiError(400, "wrong_field", f"{label}: field 'files' must be a file upload, not text")
            name = f"{label} ({up.filename})" if up.filename else label
            ctype = (up.content_type or "").split(";")[0].strip().lower()
            if ctype not in ACCEPTED_TYPES:
                raise ApiError(415, "unsupported_type", f"{name}: content type {ctype!r} is not accepted "
                                                        f"(accepted: {', '.join(self.limits.to_dict()['accepted_content_types'])})")
            out.append((name, await up.read()))
        await form.close()
        return out

    def files_from_json(self, body: bytes) -> list[tuple[str, bytes]]:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "bad_json", f"body is not valid JSON ({exc})") from None
        except RecursionError:  # [[[[... nested deeper than Python's recursion limit
            raise ApiError(400, "bad_json", "body is not usable JSON (nested too deeply)") from None
        if not isinstance(doc, dict) or "images" not in doc:
            raise ApiError(400, "missing_field", "JSON body must be an object with a list 'images' of base64 strings")
        images = doc["images"]
        if not isinstance(images, list) or not images:
            raise ApiError(400, "wrong_field", "'images' must be a non-empty list of base64 strings")
        self.check_count(len(images))  # before any base64 is decoded
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

    def check_count(self, n: int) -> None:
        if n > self.limits.max_images:
            raise ApiError(413, "too_many_images", f"{n} images in one request; the limit is {self.limits.max_images}")

    async def read_files(self, request: Request) -> list[tuple[str, bytes]]:
        """The request's image files (name, bytes), from multipart or JSON."""
        body = await self.read_body(request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            files = await self.files_from_multipart(request, body)
        elif ctype == "application/json":
            files = self.files_from_json(body)
        else:
            raise ApiError(415, "unsupported_media_type",
                           f"Content-Type {ctype or '(none)'!r}: send multipart/form-data (field 'files') "
                           "or application/json ({\"images\": [base64, ...]})")
        self.check_count(len(files))
        return files

    def _check_headers(self, files: list[tuple[str, bytes]]) -> list[int]:
        """Per-image and per-request pixel limits from the headers alone (runs in the pool); the
        images' pixel counts."""
        from cnnlab.data.decode import image_header

        total, counts = 0, []
        for name, data in files:
            try:
                w, h = image_header(data, name=name, max_pixels=self.limits.max_pixels)
            except DataError as exc:
                raise _decode_error(exc) from None
            total += w * h
            counts.append(w * h)
            if total > self.limits.max_request_pixels:
                raise ApiError(413, "too_many_pixels", f"the request's images hold over {total:,} pixels together; "
                                                       f"the limit per request is {self.limits.max_request_pixels:,}")
        return counts

    def _decode(self, name: str, data: bytes) -> np.ndarray:
        from cnnlab.data.decode import decode_image

        try:
            return decode_image(data, self.size, name=name, max_pixels=self.limits.max_pixels)
        except DataError as exc:
            raise _decode_error(exc) from None

    async def decode(self, files: list[tuple[str, bytes]]) -> np.ndarray:
        """The files' pixels, ``(N, size, size, 3)`` uint8: headers checked, then decoded, all in the pool."""
        loop = asyncio.get_running_loop()
        counts = await loop.run_in_executor(self.pool, self._check_headers, files)
        lanes = [self.pool if c <= SMALL_PIXELS else self.large_pool for c in counts]
        arrays = await asyncio.gather(*(loop.run_in_executor(lane, self._decode, n, d)
                                        for lane, (n, d) in zip(lanes, files)))
        return np.stack(arrays)

    async def read_images(self, request: Request) -> tuple[list[str], np.ndarray]:
        """The names and pixels of a request's images (every limit above applied)."""
        files = await self.read_files(request)
        return [name for name, _ in files], await self.decode(files)


__all__ = ["ACCEPTED_TYPES", "FALLBACK_SIZE", "UploadLimits", "UploadReader", "default_max_pixels"]
