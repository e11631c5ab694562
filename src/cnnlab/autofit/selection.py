"""How auto-fit handles imbalanced data, and which validation figure chooses its model.

When the training split's largest class has at least ``AUTO_RATIO`` (3) times the images of its
smallest (training/balance.py), the data are *imbalanced*: every candidate trains with
``train.class_balance: auto`` (logit adjustment; see training/balance.py for why), and the
candidates, the ensemble weights and the leaderboard are chosen and ranked by **balanced**
validation accuracy (the mean per-class recall), not plain accuracy: on a held-out split as
skewed as the training data, plain accuracy rewards a model that ignores the rare classes.
Balanced data keep plain accuracy and plain training, as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnnlab.config import ExperimentConfig
from cnnlab.training.balance import AUTO_RATIO, is_imbalanced

ACCURACY = "accuracy"
BALANCED = "balanced_accuracy"


def selection_metric(profile: Any) -> str:
    """``balanced_accuracy`` when the profile's training classes are imbalanced, else ``accuracy``."""
    counts = list((getattr(profile, "class_counts", None) or {}).values())
    return BALANCED if counts and is_imbalanced(counts) else ACCURACY


def describe(metric: str, profile: Any) -> str:
    if metric == BALANCED:
        return (f"imbalanced data (largest / smallest class {profile.imbalance_ratio:.1f}x, at least {AUTO_RATIO:g}x): "
                "candidates train with class_balance auto (logit adjustment) and are selected and ranked by "
                "balanced validation accuracy (mean per-class recall)")
    return "balanced data: candidates are selected and ranked by validation accuracy"


def apply(cfg: ExperimentConfig, metric: str) -> ExperimentConfig:
    """A candidate's config with ``train.class_balance: auto`` on imbalanced data (unchanged otherwise)."""
    if metric == BALANCED:
        cfg.train.class_balance = "auto"
    return cfg


def balanced_accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean recall over the classes present in ``y`` (scikit-learn's balanced accuracy)."""
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(y, np.asarray(probs).argmax(1)))


def worst_class(probs: np.ndarray, y: np.ndarray, class_names: list[str]) -> dict[str, Any] | None:
    """The class with the lowest recall (among those present), named, with its recall."""
    pred = np.asarray(probs).argmax(1)
    rows = [(float((pred[y == c] == c).mean()), c) for c in np.unique(y)]
    if not rows:
        return None
    recall, c = min(rows)
    return {"class": class_names[int(c)], "recall": recall}


def per_class_recall(probs: np.ndarray, y: np.ndarray, class_names: list[str]) -> dict[str, float | None]:
    """{class: recall} of the best entry on the split it was scored on (None: no image of the class)."""
    pred = np.asarray(probs).argmax(1)
    return {name: (float((pred[y == c] == c).mean()) if (y == c).any() else None) for c, name in enumerate(class_names)}


def scores(probs: np.ndarray | None, y: np.ndarray, class_names: list[str], prefix: str) -> dict[str, Any]:
    """``{prefix}_balanced_accuracy`` and ``{prefix}_worst_class`` of one candidate's probabilities."""
    if probs is None:
        return {f"{prefix}_balanced_accuracy": None, f"{prefix}_worst_class": None}
    return {f"{prefix}_balanced_accuracy": balanced_accuracy(probs, y),
            f"{prefix}_worst_class": worst_class(probs, y, class_names)}


def sample_weights(y: np.ndarray, metric: str) -> np.ndarray | None:
    """Per-image weights that make a validation mean class-balanced (1 / class count), or None."""
    if metric != BALANCED:
        return None
    counts = np.bincount(y)
    return 1.0 / counts[y]
