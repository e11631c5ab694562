"""Where a model is most wrong: the worst-misclassified gallery and a list of likely label errors.

The study's AutoMM analysis: the test images with the lowest probability for their true class,
shown with true label, predicted label and confidence. Confidently wrong predictions are also
the usual way to find wrong labels in a data set (CIFAR-10's test set has about 0.54%).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cnnlab.utils.io import atomic_write_text

LABEL_ERROR_COLUMNS = ("index", "image", "true_label", "predicted_label", "confidence", "p_true")


def worst_indices(probs: np.ndarray, y: np.ndarray, n: int = 20) -> np.ndarray:
    """Indices of the ``n`` images with the lowest probability for their true class, worst first."""
    p_true = probs[np.arange(len(y)), y]
    order = np.argsort(p_true, kind="stable")
    return order[: max(0, n)]


def gallery_titles(probs: np.ndarray, y: np.ndarray, index: np.ndarray,
                   class_names: Sequence[str]) -> tuple[list[str], list[bool]]:
    """Per image: "true / predicted (confidence)" and whether the prediction is wrong."""
    titles, wrong = [], []
    for i in index:
        pred = int(probs[i].argmax())
        titles.append(f"true: {class_names[int(y[i])]}\npred: {class_names[pred]} ({probs[i, pred]:.2f})\n"
                      f"p(true) {probs[i, int(y[i])]:.2f}")
        wrong.append(pred != int(y[i]))
    return titles, wrong


def label_error_rows(probs: np.ndarray, y: np.ndarray, class_names: Sequence[str],
                     paths: Sequence[str] | None = None, min_confidence: float = 0.9) -> list[dict[str, Any]]:
    """Confidently wrong predictions (confidence >= ``min_confidence`` on a wrong class), most confident first."""
    pred = probs.argmax(1)
    conf = probs[np.arange(len(y)), pred]
    hits = np.flatnonzero((pred != y) & (conf >= min_confidence))
    hits = hits[np.argsort(-conf[hits], kind="stable")]
    return [
        {
            "index": int(i),
            "image": paths[i] if paths is not None else f"#{int(i)}",
            "true_label": class_names[int(y[i])],
            "predicted_label": class_names[int(pred[i])],
            "confidence": round(float(conf[i]), 4),
            "p_true": round(float(probs[i, int(y[i])]), 4),
        }
        for i in hits
    ]


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path, columns: Sequence[str]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def worst_gallery(x: np.ndarray, probs: np.ndarray, y: np.ndarray, class_names: Sequence[str],
                  path: str | Path, n: int = 20, cols: int = 5) -> tuple[Path, np.ndarray]:
    """Draw the worst-``n`` gallery (``cols`` per row; 20 -> 4 x 5) and return it with its indices."""
    from cnnlab import figures

    index = worst_indices(probs, y, n)
    titles, wrong = gallery_titles(probs, y, index, class_names)
    out = figures.image_gallery(x[index], titles, wrong, path, cols=cols)
    return out, index
