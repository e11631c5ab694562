"""The study's error analysis: the images with the lowest probability for their true class.

    from cnnlab.evaluation.error_analysis import write_error_analysis
    out = write_error_analysis(probs, y, images, class_names, "runs/quick/figures", k=20, split="test")
    out["png"], out["csv"], out["rows"]

``errors.png`` is a grid, 5 images a row (k = 20: 4 x 5), each titled with its true label, the
predicted label and the prediction's confidence (red when wrong), and, when an explainer is given,
beside its Grad-CAM overlay for the predicted class (what the model looked at); ``errors.csv`` beside it lists
the same images worst first (index, path, true, predicted, p_true, p_pred): candidates for
label errors. Both are written atomically (temporary file, then rename). The figure is drawn on
a matplotlib ``Figure`` with the Agg canvas (no pyplot, no backend switch).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cnnlab.errors import CnnlabError, DataError
from cnnlab.utils.io import atomic_path, atomic_write_text, csv_safe_rows

PNG_NAME = "errors.png"
CSV_NAME = "errors.csv"
COLUMNS = ("rank", "index", "path", "true", "predicted", "p_true", "p_pred")
COLS = 5


def lowest_true_probability(probs: np.ndarray, y: np.ndarray, k: int = 20) -> np.ndarray:
    """Indices of the ``k`` images with the lowest probability for their true class, worst first
    (ties: the lower index first)."""
    p_true = probs[np.arange(len(y)), y]
    return np.argsort(p_true, kind="stable")[: max(0, k)]


def _check(probs: np.ndarray, y: np.ndarray, class_names: Sequence[str], n_images: int | None) -> None:
    if probs.ndim != 2 or probs.shape[0] != len(y):
        raise DataError(f"error analysis: probabilities of shape {probs.shape} do not match {len(y)} labels")
    if probs.shape[1] != len(class_names):
        raise DataError(f"error analysis: {probs.shape[1]} probability columns but {len(class_names)} class names")
    if len(y) and (y.min() < 0 or y.max() >= len(class_names)):
        raise DataError(f"error analysis: a label is outside 0..{len(class_names) - 1}")
    if n_images is not None and n_images != len(y):
        raise DataError(f"error analysis: {n_images} images for {len(y)} labels")


def _thumbnail(images: Any, i: int) -> np.ndarray:
    """Image ``i`` as (H, W, 3) or (H, W) uint8 for imshow; a path is read with Pillow."""
    if isinstance(images, np.ndarray) or getattr(images, "ndim", 0) == 4:  # also a RowView of decoded pixels
        img = np.asarray(images[i])
    else:
        from PIL import Image

        path = Path(images[i])
        try:
            with Image.open(path) as im:
                im.draft("RGB", (256, 256))  # JPEG: decode at a reduced size
                im = im.convert("RGB")
                im.thumbnail((256, 256))
                img = np.asarray(im)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot be read for the error analysis ({exc})") from None
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    return img


def _beside_overlay(img: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """The image and its heatmap overlay side by side (a 2-pixel white gap), for one panel."""
    from PIL import Image

    from cnnlab.evaluation.overlay import overlay

    rgb = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img
    if heatmap.shape != rgb.shape[:2]:  # a thumbnail of a file: the heatmap resized to it
        heatmap = np.asarray(Image.fromarray(heatmap.astype(np.float32)).resize(
            (rgb.shape[1], rgb.shape[0]), Image.Resampling.BILINEAR))
    gap = np.full((rgb.shape[0], max(2, rgb.shape[1] // 16), 3), 255, np.uint8)
    return np.concatenate([rgb, gap, overlay(rgb, heatmap)], axis=1)


def error_figure(images: Any, rows: Sequence[dict[str, Any]], heatmaps: Sequence[np.ndarray] | None = None) -> Any:
    """The grid as a matplotlib Figure: one panel per row, 5 a row (20 rows -> 4 x 5 panels);
    with ``heatmaps`` (one per row) each image is shown beside its heatmap overlay.

    Panels are placed with ``add_axes`` and titled with a text artist, not ``set_title``:
    matplotlib positions titles by measuring the (hidden) axis ticks, which made a 20-panel
    figure take seconds to save."""
    from cnnlab.figures import new_figure, plain

    nrows = max(1, math.ceil(len(rows) / COLS))
    panel_w, panel_h = (3.6 if heatmaps is not None else 2.0), 2.3  # inches: the image(s) plus two lines of title
    fig = new_figure((panel_w * COLS, panel_h * nrows))
    for j, r in enumerate(rows):
        row, col = divmod(j, COLS)
        ax = fig.add_axes((col / COLS + 0.01, 1 - (row + 1) / nrows + 0.01, 1 / COLS - 0.02,
                           (1 / nrows) * (panel_h - 0.45) / panel_h))
        ax.set_axis_off()
        img = _thumbnail(images, r["index"])
        if heatmaps is not None:
            img = _beside_overlay(img, heatmaps[j])
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        wrong = r["true"] != r["predicted"]
        ax.text(0.5, 1.02, f"true: {plain(r['true'])}\npred: {plain(r['predicted'])} ({r['p_pred']:.2f})", fontsize=8,
                ha="center", va="bottom", transform=ax.transAxes, color="red" if wrong else "black")
    return fig


def error_rows(probs: np.ndarray, y: np.ndarray, class_names: Sequence[str],
               paths: Sequence[str] | None = None, k: int = 20) -> list[dict[str, Any]]:
    """The CSV's rows: the ``k`` lowest-p_true images, worst first."""
    pred = probs.argmax(1)
    return [{"rank": rank + 1, "index": int(i), "path": str(paths[i]) if paths is not None else "",
             "true": class_names[int(y[i])], "predicted": class_names[int(pred[i])],
             "p_true": float(probs[i, int(y[i])]), "p_pred": float(probs[i, int(pred[i])])}
            for rank, i in enumerate(lowest_true_probability(probs, y, k))]


def write_error_analysis(probs: np.ndarray, y: np.ndarray, images: Any, class_names: Sequence[str],
                         out_dir: str | Path, *, k: int = 20, split: str = "test",
                         paths: Sequence[str] | None = None,
                         explain: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
    """Write ``errors.png`` and ``errors.csv`` into ``out_dir``; return {"png", "csv", "rows", "split", "k"}.

    ``images``: uint8 (N, H, W, 3), (N, H, W, 1) or (N, H, W) pixels, or a list of N image paths
    (then the CSV's path column holds them). ``paths`` names array images in the CSV.
    ``explain``: indices -> heatmaps (len, H, W) in [0, 1] for the predicted class (e.g. a predictor's
    Grad-CAM, cnnlab.evaluation.explain); each image is then shown beside its overlay ("overlays" in
    the result says whether they were drawn). A model Grad-CAM cannot explain leaves them out.
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if k < 0:
        raise DataError(f"error analysis: k must be 0 or more, got {k}")
    if not isinstance(images, np.ndarray) and getattr(images, "ndim", 0) != 4:  # pixels may be a RowView
        images = [str(p) for p in images]
        paths = images if paths is None else paths
    _check(probs, y, class_names, len(images))
    if paths is not None and len(paths) != len(y):
        raise DataError(f"error analysis: {len(paths)} paths for {len(y)} labels")
    rows = error_rows(probs, y, class_names, paths, k)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    maps = None
    if explain is not None and rows:
        try:
            maps = list(explain(np.array([r["index"] for r in rows])))
        except CnnlabError:  # e.g. no feature map larger than 1x1: the plain grid
            maps = None
    fig = error_figure(images, rows, maps)
    with atomic_path(out / PNG_NAME) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_safe_rows(dict(r, p_true=f"{r['p_true']:.6f}", p_pred=f"{r['p_pred']:.6f}") for r in rows))
    atomic_write_text(out / CSV_NAME, buf.getvalue())
    return {"png": out / PNG_NAME, "csv": out / CSV_NAME, "rows": rows, "split": split, "k": k,
            "overlays": maps is not None}


def run_error_analysis(probs: np.ndarray, y: np.ndarray, split: Any, class_names: Sequence[str],
                       run_dir: str | Path, split_name: str, k: int = 20,
                       explain: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, str]:
    """A trained run's error analysis on ``split`` (ImageArrays): run_dir/figures/errors.png and
    errors.csv; returns their paths relative to run_dir and the split (for metrics.json)."""
    run_dir = Path(run_dir)
    out = write_error_analysis(probs, y, split.x, class_names, run_dir / "figures", k=k, split=split_name,
                               paths=split.paths, explain=explain)
    return {"png": out["png"].relative_to(run_dir).as_posix(), "csv": out["csv"].relative_to(run_dir).as_posix(),
            "split": split_name}


__all__ = ["write_error_analysis", "run_error_analysis", "error_figure", "error_rows", "lowest_true_probability",
           "PNG_NAME", "CSV_NAME"]
