"""Auto-fit on imbalanced data: class_balance auto for its candidates, selection and ranking by
balanced validation accuracy, said in the log, fit.json, plan.json, report.md and leaderboard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cnnlab.autofit import leaderboard as lb
from cnnlab.autofit import selection
from cnnlab.autofit.ensemble import caruana_weights
from cnnlab.autofit.profile import DataProfile
from cnnlab.predictor import ImagePredictor


def _profile(counts: dict[str, int]) -> DataProfile:
    from cnnlab.data.dataset import imbalance_ratio

    return DataProfile(count=sum(counts.values()), val_count=0, test_count=0, num_classes=len(counts),
                       class_names=list(counts), per_class_min=min(counts.values()), image_size=16,
                       mixed_sizes=False, class_counts=counts, imbalance_ratio=imbalance_ratio(counts))


def test_selection_metric_follows_the_imbalance_ratio():
    assert selection.selection_metric(_profile({"a": 100, "b": 30})) == "balanced_accuracy"  # 3.3x
    assert selection.selection_metric(_profile({"a": 100, "b": 40})) == "accuracy"  # 2.5x
    assert "balanced validation accuracy" in selection.describe("balanced_accuracy", _profile({"a": 100, "b": 30}))


def test_ranking_by_balanced_accuracy_prefers_the_model_that_sees_the_rare_class():
    rows = [{"model": "majority", "val_accuracy": 0.90, "val_balanced_accuracy": 0.50, "fit_seconds": 1},
            {"model": "balanced", "val_accuracy": 0.85, "val_balanced_accuracy": 0.80, "fit_seconds": 2}]
    assert lb.rank(rows)[0]["model"] == "majority"
    assert lb.rank(rows, by="val_balanced_accuracy")[0]["model"] == "balanced"


def test_balanced_scores_and_caruana_weights_on_a_skewed_split():
    y = np.array([0] * 9 + [1])
    majority = np.tile([0.9, 0.1], (10, 1))  # always class 0: accuracy 0.9, balanced 0.5
    seer = np.where(np.eye(2)[y] > 0, 0.6, 0.4)  # right on every image, less sure
    s = selection.scores(majority, y, ["a", "b"], "val")
    assert s["val_balanced_accuracy"] == 0.5 and s["val_worst_class"] == {"class": "b", "recall": 0.0}
    # unweighted log loss prefers the confident majority model; class-balanced weights prefer the seer
    assert caruana_weights([majority, seer], y)[0] > 0.5
    w = caruana_weights([majority, seer], y, sample_weight=selection.sample_weights(y, "balanced_accuracy"))
    assert w[1] > 0.5


def test_autofit_on_imbalanced_folder_trains_balanced_and_selects_by_balanced_accuracy(make_tree, tmp_path):
    data = make_tree(tmp_path / "imb", classes=("blue", "green", "red"), per_class=24)
    for p in sorted((data / "red").glob("*.png"))[5:]:
        p.unlink()  # 24 / 24 / 5: ratio 4.8
    lines: list[str] = []
    pred = ImagePredictor(label="label", path=tmp_path / "fit").fit(str(data), time_limit=20, log=lines.append)
    info = pred.fit_summary()
    assert info["selection_metric"] == "val_balanced_accuracy"
    assert info["profile"]["class_counts"]["red"] == 4 and info["profile"]["imbalance_ratio"] == pytest.approx(19 / 4)
    assert any("imbalance ratio 4.8" in s for s in lines)  # the profile line (train split: 19 / 19 / 4)
    assert any(s.startswith("imbalanced data") and "balanced validation accuracy" in s for s in lines)
    assert any("logit-adjusted loss" in s for s in lines)  # the candidate trained with class_balance auto
    folder = Path(info["folder"])
    row = info["leaderboard"][0]
    assert 0 <= row["val_balanced_accuracy"] <= 1 and row["val_worst_class"]["class"] in ("blue", "green", "red")
    assert json.loads((folder / "plan.json").read_text())["actual"]["selection_metric"] == "val_balanced_accuracy"
    report = (folder / "report.md").read_text()
    assert "balanced validation accuracy" in report and "| val balanced |" in report and "imbalance ratio" in report
    assert "val_balanced_accuracy" in (folder / "leaderboard.csv").read_text().splitlines()[0]
    config = (folder / "models" / row["model"] / "config.yaml").read_text()
    assert "class_balance: auto" in config
