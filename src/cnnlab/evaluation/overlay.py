"""Pictures of heatmaps: a colour overlay on the image, and a captioned panel (image | overlay).

Colours come from matplotlib's ``jet`` colormap (read from ``matplotlib.colormaps``: no pyplot,
no backend switch); images are composed and written with Pillow.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

#: Panels are enlarged (nearest neighbour) until their shorter side is at least this many pixels.
MIN_PANEL_SIDE = 192
ALPHA = 0.5


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8 through the jet colormap."""
    import matplotlib

    rgba = matplotlib.colormaps["jet"](np.clip(heatmap, 0.0, 1.0))
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """The image (H, W, 3) uint8 blended with its coloured heatmap (H, W)."""
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colorize(heatmap).astype(np.float32)
    return np.clip(blend + 0.5, 0, 255).astype(np.uint8)


def panel(image: np.ndarray, heatmap: np.ndarray, caption: str, *, min_side: int = MIN_PANEL_SIDE) -> "Image.Image":  # noqa: F821
    """A PIL image: the image and its overlay side by side, the caption on a strip below."""
    from PIL import Image, ImageDraw

    h, w = image.shape[:2]
    scale = max(1, int(np.ceil(min_side / min(h, w))))
    size = (w * scale, h * scale)
    left = Image.fromarray(image).resize(size, Image.Resampling.NEAREST)
    right = Image.fromarray(overlay(image, heatmap)).resize(size, Image.Resampling.NEAREST)
    strip = 22
    out = Image.new("RGB", (2 * size[0] + 4, size[1] + strip), (255, 255, 255))
    out.paste(left, (0, 0))
    out.paste(right, (size[0] + 4, 0))
    ImageDraw.Draw(out).text((4, size[1] + 5), caption, fill=(0, 0, 0))
    return out


def caption(label: str, probability: float, method: str = "gradcam") -> str:
    return f"{label}  {100 * probability:.1f}%  ({method})"


def png_bytes(img: "Image.Image") -> bytes:  # noqa: F821
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()




def write_overlays(explanation: Any, out_dir: str | Path, decode_size: int | None, *, start: int = 0,
                   used: set[str] | None = None) -> list[dict[str, Any]]:
    """One overlay PNG per explained image in ``out_dir`` (``<image stem>.<method>.png``), and per
    image {"image", "label", "probability", "heatmap_png", "peak": [x, y]}; ``peak`` is in the
    image file's own pixels (its upright original size; decoded pixels for an array row).

    For an explanation written a chunk at a time: ``start`` is the chunk's first image number and
    ``used`` the file names written so far (a set shared by the calls), so the names are those of
    one call on every image."""
    from cnnlab.data.decode import to_original_xy, upright_size
    from cnnlab.utils.io import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    used = set() if used is None else used
    rows = []
    for k, name in enumerate(explanation.names):
        i = start + k
        heat, image = explanation.heatmaps[k], explanation.images[k]
        stem = Path(name).stem if not name.startswith("#") else f"image{name[1:]}"
        file_name = f"{stem}.{explanation.method}.png"
        if file_name in used:
            file_name = f"{stem}-{i}.{explanation.method}.png"
        used.add(file_name)
        label, prob = explanation.labels[k], explanation.probabilities[k]
        target = out / file_name
        with atomic_path(target) as tmp:
            panel(image, heat, caption(label, prob, explanation.method)).save(tmp, format="PNG")
        x, y = peak_xy(heat)
        if not name.startswith("#") and Path(name).is_file():
            x, y = to_original_xy(x, y, upright_size(name), decode_size)
        rows.append({"image": name, "label": label, "probability": prob, "heatmap_png": str(target),
                     "peak": [x, y]})
    return rows


def peak_xy(heatmap: np.ndarray) -> tuple[int, int]:
    """(x, y) of the heatmap's maximum in its own pixels (the first on ties)."""
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(x), int(y)


__all__ = ["caption", "colorize", "overlay", "panel", "peak_xy", "png_bytes", "write_overlays"]
