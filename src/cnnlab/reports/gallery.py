"""A list of likely label errors: confidently wrong predictions.

Confidently wrong predictions are the usual way to find wrong labels in a data set (CIFAR-10's
test set has about 0.54%). The study's gallery of the images with the lowest probability for
their true class is evaluation/error_analysis.py.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cnnlab.utils.io import atomic_write_text, csv_safe_rows

LABEL_ERROR_COLUMNS = ("index", "image", "true_label", "predicted_label", "confidence", "p_true")


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
    writer.writerows(csv_safe_rows(rows))
    atomic_write_text(path, buf.getvalue())
    return Path(path)
