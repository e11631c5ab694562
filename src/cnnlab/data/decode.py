"""Decoding one image file into an RGB uint8 array: the one place cnnlab reads pixels.

The rules, applied in this order:

1. The file is opened with Pillow; anything Pillow cannot identify, an empty file, a truncated
   file or an image over ``max_pixels`` (a decompression bomb, checked from the header before any
   pixel is decoded) is an error naming the file. A JPEG larger than twice ``size`` is decoded in
   draft mode (the decoder's DCT scaling: 1/2, 1/4 or 1/8 of full size, never below twice ``size``),
   and any other image more than four times ``size`` on its shorter side is first reduced by
   box averaging to about twice ``size`` (``Image.reduce``), so a large upload costs no
   full-size copies in the steps below.
2. The EXIF orientation tag is applied (a phone photo taken sideways comes out upright).
3. Colour modes become 8-bit RGB:
   - RGB: unchanged; L / 1 (grayscale, bilevel): the gray value is copied to R, G and B;
   - P (palette): expanded through the palette; with transparency it is treated as RGBA;
   - RGBA / LA / PA: alpha-composited onto a white background;
   - I;16 and other 16-bit or 32-bit integer modes: scaled to 8 bits (value / 257 for 16-bit
     data, i.e. 65535 -> 255), then treated as grayscale;
   - F (32-bit float): values assumed in [0, 1] when they all are, else in [0, 255]; clipped;
   - CMYK, YCbCr, LAB, HSV: Pillow's conversion to RGB.
4. Resizing to ``size`` x ``size`` (when a size is given and differs): a JPEG at least four times
   larger is first decoded at a reduced scale by libjpeg (``draft``), its shorter side staying at
   least ``2 * size``; then the shorter side is scaled
   to ``size`` with Pillow's antialiased bilinear filter, then the centre is cropped, so the
   aspect ratio is kept (what timm's evaluation transform does; Keras's squash is not used).
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnlab.errors import DataError

#: Images above this many pixels are refused as decompression bombs (Pillow's own warning threshold;
#: messages quote this number, not Pillow's error threshold of twice as many).
MAX_PIXELS = 89_478_485

#: Bumped whenever a rule above (or the folder order, folder.py) changes, so on-disk caches of decoded pixels are rebuilt.
DECODE_VERSION = 4

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def list_image_files(inputs: list[str | Path] | tuple[str | Path, ...]) -> list[Path]:
    """The image files among ``inputs`` (files, and folders searched recursively by suffix).

    A path that does not exist, or a folder that holds no image, is an error naming it."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and is_image_name(q.name))
            if not found:
                raise DataError(f"{p}: no images in this folder (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
            paths += found
        elif p.exists() or p.is_symlink():
            paths.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    if not paths:
        raise DataError("no images to predict")
    return paths


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I"):  # I, I;16, I;16B, I;16L, I;16N
        arr = np.asarray(img).astype(np.float64)
        # 16-bit data is always value / 257, whatever the image's own maximum (a dark 16-bit image
        # stays dark); 32-bit "I" data is only scaled when it exceeds the 8-bit range.
        arr = arr / 257.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else arr
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img).astype(np.float64)
        scale = 255.0 if arr.size and np.nanmax(arr) <= 1.0 else 1.0
        gray = np.clip(np.rint(np.nan_to_num(arr) * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _resize_crop_geometry(w: int, h: int, size: int) -> tuple[int, int, int, int]:
    """(resized width, resized height, crop left, crop top) of rule 4 for a w x h image."""
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    return nw, nh, (nw - size) // 2, (nh - size) // 2


def _shrink_early(img: Image.Image, size: int | None) -> Image.Image:
    """Cheap downscaling before the colour conversion: JPEG draft mode, else an integer box reduce,
    keeping the shorter side at least twice ``size`` (the final antialiased resize does the rest)."""
    if size is None:
        return img
    w, h = img.size
    if img.format == "JPEG" and min(w, h) >= 4 * size:
        img.draft(img.mode if img.mode in ("RGB", "L") else None, (2 * size, 2 * size))
        return img
    factor = min(w, h) // (2 * size)
    if factor >= 2:
        img.load()
        try:
            return img.reduce(factor)
        except ValueError:  # a mode reduce does not take (P, 1, ...): convert first, as before
            return img
    return img


def image_header(data: bytes, *, name: str = "<bytes>", max_pixels: int | None = None) -> tuple[int, int]:
    """``(width, height)`` from an image file's header, nothing decoded; DataError when it is not an
    image Pillow can identify or is over ``max_pixels``."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if not data:
        raise DataError(f"{name}: empty file")
    try:
        # No warnings.catch_warnings() here: it swaps process-wide filters and is not thread-safe,
        # and this runs in the server's decode threads. Pillow warns only above its own limit
        # (89 M pixels), which the check below refuses anyway.
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{name}: exceeds cnnlab's limit of {limit:,} pixels (possible decompression bomb)") from None
    except UnidentifiedImageError:
        raise DataError(f"{name}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{name}: corrupt or truncated image ({exc})") from None
    if w * h > limit:
        raise DataError(f"{name}: {w}x{h} = {w * h:,} pixels exceeds cnnlab's limit of {limit:,} "
                        "(possible decompression bomb)")
    return w, h


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if (w, h) == (size, size):
        return img
    nw, nh, left, top = _resize_crop_geometry(w, h, size)
    img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)
    return img.crop((left, top, left + size, top + size))


def upright_size(source: str | Path | bytes) -> tuple[int, int]:
    """(width, height) of an image file (a path or its bytes) as decode_image sees it before
    resizing (EXIF rotation applied), read from the header without decoding the pixels."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
        w, h = img.size
        orientation = img.getexif().get(0x0112, 1)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def to_original_xy(x: float, y: float, original: tuple[int, int], size: int | None) -> tuple[int, int]:
    """A pixel (x, y) of an image decoded at ``size`` -> the same point in the upright original
    (width, height) ``original``: rule 4's resize and centre crop undone."""
    w, h = original
    if size is None or (w, h) == (size, size):
        return int(x), int(y)
    nw, nh, left, top = _resize_crop_geometry(w, h, size)
    ox = (x + 0.5 + left) * w / nw - 0.5
    oy = (y + 0.5 + top) * h / nh - 0.5
    return int(min(max(round(ox), 0), w - 1)), int(min(max(round(oy), 0), h - 1))


def decode_image(
    source: str | Path | bytes,
    size: int | None = None,
    *,
    name: str | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Decode one image (a path or the file's bytes) to an ``(H, W, 3)`` uint8 RGB array.

    ``name`` is used in error messages when ``source`` is bytes (e.g. an archive member).
    ``max_pixels`` defaults to the module's ``MAX_PIXELS``, read at call time.
    """
    if max_pixels is None:
        max_pixels = MAX_PIXELS
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    if isinstance(source, bytes):
        if not source:
            raise DataError(f"{label}: empty file")
        fh: io.BytesIO | Path = io.BytesIO(source)
    else:
        path = Path(source)
        if path.is_dir():
            raise DataError(f"{label}: is a folder, not an image file")
        try:
            if path.stat().st_size == 0:
                raise DataError(f"{label}: empty file")
        except FileNotFoundError:
            if path.is_symlink():
                raise DataError(f"{label}: broken symbolic link (to {os.readlink(path)}, which does not exist)") from None
            raise DataError(f"{label}: file not found") from None
        except OSError as exc:
            raise DataError(f"{label}: cannot read ({exc.strerror or exc})") from None
        fh = path
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise DataError(f"image size must be a positive integer (CLI: --image-size N), got {size!r}")
    pillow_limit = Image.MAX_IMAGE_PIXELS or float("inf")
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit (the same as MAX_PIXELS unless either is changed).
            warnings.simplefilter("error" if max_pixels <= pillow_limit else "ignore", Image.DecompressionBombWarning)
            with Image.open(fh) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise DataError(
                        f"{label}: {w}x{h} = {w * h:,} pixels exceeds cnnlab's limit of {max_pixels:,} "
                        "(possible decompression bomb)"
                    )
                img = _shrink_early(img, size)
                img.load()
                img = ImageOps.exif_transpose(img) or img
                img = _to_rgb(img)
                if size is not None:
                    img = resize_center_crop(img, size)
                arr = np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's message quotes Pillow's limit (twice MAX_PIXELS for its error): quote cnnlab's.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1)):,} pixels " if found else ""
        raise DataError(f"{label}: {pixels}exceeds cnnlab's limit of {max_pixels:,} pixels "
                        "(possible decompression bomb)") from None
    except UnidentifiedImageError:
        raise DataError(f"{label}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated / corrupt data
        raise DataError(f"{label}: corrupt or truncated image ({exc})") from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(f"{label}: decoded to an unexpected shape {arr.shape}")
    return arr
