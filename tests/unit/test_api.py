"""The Python API and the evaluate / predict commands, on tiny trained runs."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

pytest.importorskip("timm")

from cnnlab import api  # noqa: E402
from cnnlab.cli.main import main  # noqa: E402
from cnnlab.errors import DataError  # noqa: E402
from cnnlab.evaluation.predict import predict_logits  # noqa: E402
from cnnlab.models.io import load_model  # noqa: E402
from cnnlab.training.rundir import RunDir  # noqa: E402


COLOURS = {"blue": (30, 40, 210), "green": (35, 200, 45), "red": (215, 35, 30)}
CLASSES = list(COLOURS)
TRAIN_CFG = {
    "name": "api-test", "seed": 0,
    "data": {"validation_split": 0.2},
    "model": {"arch": "test_resnet", "head": {"pooling": "max"}},
    "train": {"epochs": 3, "batch_size": 16, "precision": "fp32", "optimizer": {"name": "adam", "lr": 3e-3},
              "checkpoint": {"monitor": "val_accuracy"}},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _image(colour, rng, size=16) -> np.ndarray:
    noise = rng.integers(-20, 21, (size, size, 3))
    return np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)


def _write_split_tree(root: Path, train_per_class: int = 20, test_per_class: int = 5) -> list[dict]:
    """root/{train,test}/<class>/<i>.png; returns one row per image (for a DataFrame)."""
    rng = np.random.default_rng(7)
    rows = []
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                path = folder / f"{i:03d}.png"
                Image.fromarray(_image(colour, rng)).save(path)
                rows.append({"image": str(path), "label": name, "split": split})
    return rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two small runs: one on a folder tree (for the CLI), one on a DataFrame (for the API)."""
    root = tmp_path_factory.mktemp("api")
    rows = _write_split_tree(root / "tree")
    frame = pd.DataFrame(rows)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_HOME", str(root / "home"))
        mp.setenv("OMP_NUM_THREADS", "1")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        tree_run = api.train(TRAIN_CFG, data=str(root / "tree"), run_dir=root / "tree-run", progress=False,
                             log=lambda s: None)
        df_run = api.train(dict(TRAIN_CFG), data=frame, run_dir=root / "df-run", progress=False,
                           log=lambda s: None)
        torch.set_num_threads(threads)
    return {"root": root, "tree": root / "tree", "frame": frame, "tree_run": tree_run, "df_run": df_run}



# ------------------------------------------------------------------ the Python API


def test_train_with_a_dict_config_and_a_dataframe(runs):
    res = runs["df_run"]
    assert res.config.train.epochs == 3 and res.config.model.arch == "test_resnet"
    assert res.metrics["epochs_run"] == 3
    assert res.metrics["test"]["count"] == 15  # the DataFrame's split column gave a test split
    assert res.metrics["test"]["accuracy"] > 0.6  # chance is 1/3
    assert res.model.class_names == CLASSES
    for name in ("config.yaml", "history.csv", "model.safetensors", "model.json", "metrics.json"):
        assert (res.run_dir / name).is_file(), name
    # The run does not pretend to have trained on the default source (cifar10).
    assert RunDir(res.run_dir).read_config().data.source != "cifar10"
    assert json.loads((res.run_dir / "model.json").read_text())["train"]["data"] != "cifar10"


def test_evaluate_a_dataframe_run(runs):
    rd = runs["df_run"].run_dir
    report = api.evaluate(rd, runs["frame"])
    assert report["split"] == "test" and report["count"] == 15
    assert report["accuracy"] == pytest.approx(runs["df_run"].metrics["test"]["accuracy"])
    # Without the DataFrame there is nothing to evaluate on: a clear error, no CIFAR-10 download.
    with pytest.raises(DataError, match="DataFrame"):
        api.evaluate(rd)


def test_predict_on_a_numpy_array(runs):
    rng = np.random.default_rng(11)
    x = np.stack([_image(COLOURS[c], rng) for c in ("red", "blue", "green", "red")])
    out = api.predict(runs["df_run"].run_dir, x, top_k=2)
    assert [o["image"] for o in out] == ["#0", "#1", "#2", "#3"]
    assert [o["top"][0]["label"] for o in out] == ["red", "blue", "green", "red"]
    for o in out:
        probs = [t["probability"] for t in o["top"]]
        assert len(probs) == 2 and probs == sorted(probs, reverse=True)
        assert 0.0 <= sum(probs) <= 1.0 + 1e-6
    proba, names = api.predict_proba(runs["df_run"].run_dir, x)
    assert proba.shape == (4, 3)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)


# ------------------------------------------------------------------ cnnlab evaluate


def test_cli_evaluate_json(runs, capsys):
    rd = runs["tree_run"].run_dir
    assert main(["evaluate", str(rd), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("loss", "accuracy", "top5_accuracy", "per_class", "confusion_matrix"):
        assert key in report, key
    assert report["split"] == "test" and report["count"] == 15
    cm = np.array(report["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == 15
    assert cm.sum(1).tolist() == [5, 5, 5]  # rows: true classes
    assert report["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert report["accuracy"] > 0.6
    assert report["top5_accuracy"] == 1.0  # 3 classes: the true one is always in the top 5
    assert np.isfinite(report["loss"]) and report["loss"] > 0
    assert [r["class"] for r in report["per_class"]] == CLASSES
    for i, r in enumerate(report["per_class"]):
        tp = cm[i, i]
        precision = tp / cm[:, i].sum() if cm[:, i].sum() else 0.0
        recall = tp / cm[i].sum()
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        assert (r["precision"], r["recall"], r["f1"]) == pytest.approx((precision, recall, f1))
        assert r["support"] == 5
    recalls = [r["recall"] for r in report["per_class"]]
    assert report["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    assert report["macro_f1"] == pytest.approx(np.mean([r["f1"] for r in report["per_class"]]))
    assert report["worst_class"]["recall"] == pytest.approx(min(recalls))
    assert report["worst_class"]["class"] == CLASSES[int(np.argmin(recalls))]
    assert (rd / "figures" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    lines = (rd / "confusion_matrix.csv").read_text().splitlines()
    assert lines[0].split(",")[1:] == CLASSES
    assert [[int(v) for v in line.split(",")[1:]] for line in lines[1:]] == cm.tolist()
    assert [line.split(",")[0] for line in lines[1:]] == CLASSES


def test_cli_evaluate_table_tta_and_best_weights(runs, capsys):
    rd = runs["tree_run"].run_dir
    assert main(["evaluate", str(rd), "--tta", "flip", "--weights", "best"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "precision" in out and "balanced accuracy" in out and "worst class" in out
    for name in CLASSES:
        assert name in out
    report = api.evaluate(rd, tta="flip_translate")
    assert report["tta"] == "flip_translate" and report["count"] == 15


# ------------------------------------------------------------------ cnnlab predict


@pytest.fixture
def predict_inputs(tmp_path):
    rng = np.random.default_rng(12)
    single = tmp_path / "one.png"
    Image.fromarray(_image(COLOURS["green"], rng, size=24)).save(single)  # another size: resized
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(_image(COLOURS["red"], rng)).save(folder / "a.png")
    Image.fromarray(_image(COLOURS["blue"], rng)).save(folder / "sub" / "b.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")
    return single, folder


def test_cli_predict_json(runs, predict_inputs, capsys):
    single, folder = predict_inputs
    assert main(["predict", str(runs["tree_run"].run_dir), str(single), str(folder), "--format", "json",
                 "--top-k", "2"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [Path(r["image"]).name for r in results] == ["one.png", "a.png", "b.jpg"]
    assert [r["top"][0]["label"] for r in results] == ["green", "red", "blue"]
    for r in results:
        probs = [t["probability"] for t in r["top"]]
        assert len(probs) == 2
        assert probs == sorted(probs, reverse=True)
        assert all(0.0 <= p <= 1.0 for p in probs) and sum(probs) <= 1.0 + 1e-6
        assert {t["label"] for t in r["top"]} <= set(CLASSES)


def test_cli_predict_csv_and_table(runs, predict_inputs, capsys):
    single, folder = predict_inputs
    rd = str(runs["tree_run"].run_dir)
    assert main(["predict", rd, str(single), str(folder), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 3
    assert list(rows[0]) == ["image", "label_1", "p_1", "label_2", "p_2", "label_3", "p_3"]
    for row in rows:
        p = [float(row[f"p_{i}"]) for i in (1, 2, 3)]
        assert p == sorted(p, reverse=True) and sum(p) == pytest.approx(1.0, abs=2e-4)
    assert main(["predict", rd, str(single), "--format", "table", "--tta", "flip_translate"]) == 0
    table = capsys.readouterr().out
    assert "one.png" in table and "label_1" in table and "green" in table


def test_cli_predict_missing_file_exits_2(runs, tmp_path, capsys):
    assert main(["predict", str(runs["tree_run"].run_dir), str(tmp_path / "nope.png")]) == 2
    assert "nope.png" in capsys.readouterr().err


# ------------------------------------------------------------------ test-time augmentation


@pytest.mark.parametrize("tta", ["none", "flip", "flip_translate"])
def test_tta_modes_give_probabilities(runs, tta):
    rng = np.random.default_rng(13)
    x = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    proba, _ = api.predict_proba(runs["tree_run"].run_dir, x, tta=tta)
    assert proba.shape == (5, 3) and np.all(proba >= 0)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)


def test_flip_tta_of_a_mirror_symmetric_image_equals_no_tta(runs):
    model = load_model(runs["tree_run"].run_dir)
    rng = np.random.default_rng(14)
    half = rng.integers(0, 256, (4, 16, 8, 3), dtype=np.uint8)
    symmetric = np.concatenate([half, half[:, :, ::-1]], axis=2)  # x == x flipped left-right
    assert np.array_equal(symmetric, symmetric[:, :, ::-1])
    plain = predict_logits(model, symmetric, tta="none")
    torch.testing.assert_close(predict_logits(model, symmetric, tta="flip"), plain, rtol=1e-5, atol=1e-5)
    # ... while on an asymmetric image flipping is a different view (TTA is not a no-op).
    asym = np.concatenate([half, rng.integers(0, 256, (4, 16, 8, 3), dtype=np.uint8)], axis=2)
    diff = (predict_logits(model, asym, tta="flip") - predict_logits(model, asym, tta="none")).abs().max()
    assert diff > 1e-4
    # A constant image looks the same from every TTA view: the view weights sum to one.
    flat = np.full((2, 16, 16, 3), 90, dtype=np.uint8)
    torch.testing.assert_close(predict_logits(model, flat, tta="flip_translate"),
                               predict_logits(model, flat, tta="none"), rtol=1e-5, atol=1e-5)
