"""The run report's "Where the model looks" section: Grad-CAM overlays of a few correct and a few
wrong predictions per class (cnnlab.evaluation.explain), one figure, cheap (at most
``per_class`` x 2 x ``max_classes`` images are explained).

    from cnnlab.reports.explain_gallery import pick, write_gallery
    info = write_gallery(images, probs, y, class_names, explain, "report/explanations.png")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.errors import CnnlabError
from cnnlab.utils.io import atomic_path

PNG_NAME = "explanations.png"


def pick(probs: np.ndarray, y: np.ndarray, per_class: int = 2, max_classes: int = 10) -> list[tuple[int, int, bool]]:
    """(class, image index, correct) rows: per true class (the first ``max_classes``), its ``per_class``
    most confident correct predictions and its ``per_class`` most confident wrong ones."""
    pred, conf = probs.argmax(1), probs.max(1)
    out = []
    for c in range(min(probs.shape[1], max_classes)):
        for correct in (True, False):
            idx = np.flatnonzero((y == c) & ((pred == y) == correct))
            out += [(c, int(i), correct) for i in idx[np.argsort(-conf[idx], kind="stable")][:per_class]]
    return out


def write_gallery(images: np.ndarray, probs: np.ndarray, y: np.ndarray, class_names: Sequence[str],
                  explain: Callable[[np.ndarray], np.ndarray], out_png: str | Path, *, per_class: int = 2,
                  max_classes: int = 10) -> dict[str, Any] | None:
    """Write the overlay grid (a row per class: correct ones, then wrong ones, each image beside its
    Grad-CAM overlay for the predicted class); None when there is nothing to show or the model
    cannot be explained (no feature map larger than 1x1)."""
    from cnnlab.evaluation.overlay import overlay
    from cnnlab.figures import new_figure

    rows = pick(probs, y, per_class, max_classes)
    if not rows:
        return None
    try:
        maps = explain(np.array([i for _, i, _ in rows]))
    except CnnlabError:
        return None
    classes = sorted({c for c, _, _ in rows})
    cols = 2 * per_class
    fig = new_figure((3.2 * cols, 2.0 * len(classes)))
    pred = probs.argmax(1)
    for (c, i, correct), heat in zip(rows, maps):
        r = classes.index(c)
        slot = [j for j, (cc, _, ok) in enumerate(rows) if cc == c and ok == correct].index(rows.index((c, i, correct)))
        col = slot + (0 if correct else per_class)
        ax = fig.add_axes((col / cols + 0.005, 1 - (r + 1) / len(classes) + 0.005, 1 / cols - 0.01,
                           (1 / len(classes)) * 0.78))
        ax.set_axis_off()
        img = images[i]
        gap = np.full((img.shape[0], max(2, img.shape[1] // 16), 3), 255, np.uint8)
        ax.imshow(np.concatenate([img, gap, overlay(img, heat)], axis=1), interpolation="nearest")
        text = f"{class_names[c]} -> {class_names[int(pred[i])]} ({probs[i].max():.2f})"
        ax.text(0.5, 1.02, text, fontsize=7, ha="center", va="bottom", transform=ax.transAxes,
                color="black" if correct else "red")
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return {"png": str(out), "images": len(rows), "classes": len(classes), "per_class": per_class,
            "correct": sum(ok for _, _, ok in rows), "wrong": sum(not ok for _, _, ok in rows)}


__all__ = ["PNG_NAME", "pick", "write_gallery"]
