"""Classification metrics from logits and labels: the one place accuracy is computed.

Beside accuracy every report has the figures that stay honest on imbalanced data: balanced
accuracy (mean per-class recall), macro-F1 and the worst class's recall (named).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: the summary keys every evaluation records (metrics.json, the auto-fit's candidates, the CLI)
SUMMARY_KEYS = ("count", "loss", "accuracy", "balanced_accuracy", "macro_f1", "worst_class", "top5_accuracy", "ece")


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean()) if len(y) else float("nan")


def topk_accuracy(logits: torch.Tensor, y: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    return float((logits.topk(k, dim=1).indices == y.view(-1, 1)).any(1).float().mean())


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class(cm: np.ndarray, class_names: list[str]) -> list[dict[str, Any]]:
    tp = np.diag(cm).astype(float)
    support = cm.sum(1)
    predicted = cm.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return [
        {"class": n, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for n, p, r, f, s in zip(class_names, precision, recall, f1, support)
    ]


def balanced_metrics(y_true: np.ndarray, y_pred: np.ndarray, cm: np.ndarray, class_names: list[str]
                     ) -> dict[str, Any]:
    """Balanced accuracy (the mean recall over the classes present, scikit-learn's definition),
    macro-F1 (over every class, scikit-learn's ``f1_score(average="macro")``) and the class with
    the lowest recall among those present, named."""
    from sklearn.metrics import f1_score

    support = cm.sum(1)
    present = np.flatnonzero(support > 0)
    if not len(present):
        return {"balanced_accuracy": float("nan"), "macro_f1": float("nan"), "worst_class": None}
    recall = np.diag(cm)[present] / support[present]
    # sklearn.metrics.balanced_accuracy_score gives the same number but warns when a class is
    # predicted that no image has; the confusion matrix is already here
    worst = int(present[int(np.argmin(recall))])
    macro_f1 = f1_score(y_true, y_pred, labels=np.arange(len(class_names)), average="macro", zero_division=0)
    return {"balanced_accuracy": float(recall.mean()), "macro_f1": float(macro_f1),
            "worst_class": {"class": class_names[worst], "recall": float(recall.min()), "support": int(support[worst])}}


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> tuple[float, list[dict]]:
    """ECE over equal-width confidence bins, and the bins for a reliability diagram."""
    conf, pred = probs.max(1)
    correct = (pred == y).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece, table = 0.0, []
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (conf > lo) & (conf <= hi)
        n = int(mask.sum())
        if n:
            acc_b, conf_b = float(correct[mask].mean()), float(conf[mask].mean())
            ece += n / len(y) * abs(acc_b - conf_b)
        else:
            acc_b = conf_b = float("nan")
        table.append({"lo": float(lo), "hi": float(hi), "count": n, "accuracy": acc_b, "confidence": conf_b})
    return float(ece), table


def classification_report(logits: torch.Tensor, y: np.ndarray | torch.Tensor, class_names: list[str]) -> dict[str, Any]:
    """Loss, accuracy, balanced accuracy, macro-F1, the worst class's recall, top-5, per-class
    precision/recall/F1, confusion matrix and ECE."""
    y_t = torch.as_tensor(np.asarray(y), dtype=torch.long)
    logits = logits.float()
    probs = logits.softmax(1)
    pred = logits.argmax(1)
    cm = confusion_matrix(y_t.numpy(), pred.numpy(), len(class_names))
    ece, bins = expected_calibration_error(probs, y_t)
    rows = per_class(cm, class_names)
    return {
        "count": int(len(y_t)),
        "loss": float(F.cross_entropy(logits, y_t)) if len(y_t) else float("nan"),
        "accuracy": accuracy(logits, y_t),
        "top5_accuracy": topk_accuracy(logits, y_t, 5),
        **balanced_metrics(y_t.numpy(), pred.numpy(), cm, list(class_names)),
        "ece": ece,
        "per_class": rows,
        "confusion_matrix": cm.tolist(),
        "calibration_bins": bins,
        "class_names": list(class_names),
    }
