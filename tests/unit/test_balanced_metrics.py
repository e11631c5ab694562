"""Balanced accuracy, macro-F1 and the worst class on known confusion matrices (evaluation/metrics.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score

from cnnlab.evaluation.metrics import SUMMARY_KEYS, classification_report

NAMES = ["cat", "dog", "bird"]


def _from_confusion(cm):
    """Labels and one-hot logits whose confusion matrix is ``cm`` (rows true, columns predicted)."""
    y, pred = [], []
    for t, row in enumerate(cm):
        for p, n in enumerate(row):
            y += [t] * n
            pred += [p] * n
    logits = torch.nn.functional.one_hot(torch.tensor(pred), len(cm)).float() * 5
    return logits, np.array(y), np.array(pred)


def test_skewed_confusion_matrix():
    # 90 cats all right, 9 dogs with 3 right, 1 bird wrong: accuracy 0.94, balanced (1 + 1/3 + 0) / 3
    cm = [[90, 0, 0], [6, 3, 0], [1, 0, 0]]
    logits, y, pred = _from_confusion(cm)
    r = classification_report(logits, y, NAMES)
    assert r["confusion_matrix"] == cm
    assert r["accuracy"] == pytest.approx(0.93)
    assert r["balanced_accuracy"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert r["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    # F1: cat 2*90/(90+97)... computed by hand: P=90/97, R=1; dog P=1, R=1/3; bird 0
    p_cat = 90 / 97
    f1 = [2 * p_cat / (p_cat + 1), 2 * (1 / 3) / (1 + 1 / 3), 0.0]
    assert r["macro_f1"] == pytest.approx(np.mean(f1))
    assert r["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert r["worst_class"] == {"class": "bird", "recall": 0.0, "support": 1}
    assert set(SUMMARY_KEYS) <= set(r)


def test_perfect_and_a_class_absent_from_the_split():
    cm = [[5, 0, 0], [0, 5, 0], [0, 0, 0]]  # no bird in this split, and none predicted
    logits, y, _ = _from_confusion(cm)
    r = classification_report(logits, y, NAMES)
    assert r["balanced_accuracy"] == 1.0  # over the classes present (scikit-learn's definition)
    assert r["worst_class"]["class"] in ("cat", "dog") and r["worst_class"]["recall"] == 1.0
    assert r["macro_f1"] == pytest.approx(2 / 3)  # the absent class's F1 counts as 0, as before


def test_worst_class_is_the_lowest_recall():
    cm = [[8, 2, 0], [0, 10, 0], [0, 5, 5]]
    logits, y, _ = _from_confusion(cm)
    r = classification_report(logits, y, NAMES)
    assert r["worst_class"] == {"class": "bird", "recall": 0.5, "support": 10}
    assert r["balanced_accuracy"] == pytest.approx((0.8 + 1.0 + 0.5) / 3)
