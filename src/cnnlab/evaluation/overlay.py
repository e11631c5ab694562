"""Pictures of heatmaps: a colour overlay on the image, and a captioned panel (image | overlay).

Colours come from matplotlib's ``jet`` colormap (read from ``matplotlib.colormaps``: no pyplot,
no backend switch); images are composed and written with Pillow.
"""

from __future__ import annotations

import io

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


__all__ = ["caption", "colorize", "overlay", "panel", "png_bytes"]
