"""cnnlab.ImagePredictor: fit, predict, predict_proba, evaluate, embed, save/load, on a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

pytest.importorskip("timm")

import cnnlab  # noqa: E402
from cnnlab import api  # noqa: E402
from cnnlab.errors import ModelError  # noqa: E402
from cnnlab.predictor import ImagePredictor  # noqa: E402

COLOURS = {"blue": (30, 40, 210), "green": (35, 200, 45), "red": (215, 35, 30)}
CONFIG = {
    "name": "predictor-test", "seed": 0,
    "data": {"validation_split": 0.25},
    "model": {"arch": "test_resnet", "head": {"pooling": "avg"}},
    # flip TTA: predict must use it as evaluate does (it used to predict without it).
    "train": {"epochs": 2, "batch_size": 16, "precision": "fp32", "tta": "flip",
              "optimizer": {"name": "adam", "lr": 3e-3}},
}


def _write(root: Path, per_class: int, seed: int, size: int = 16) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            px = np.clip(np.array(colour) + rng.integers(-40, 41, (size, size, 3)), 0, 255).astype(np.uint8)
            px[: size // 2, : size // 3] = rng.integers(0, 256, 3)  # an asymmetric patch: flip TTA matters
            path = root / name / f"{i:03d}.png"
            Image.fromarray(px).save(path)
            rows.append({"image": str(path), "label": name})
    return rows


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("predictor")
    train_rows = _write(root / "data" / "train", 12, seed=1)
    _write(root / "data" / "test", 4, seed=2)
    frame = pd.DataFrame(train_rows)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_HOME", str(root / "home"))
        mp.setenv("OMP_NUM_THREADS", "1")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            pred = ImagePredictor(label="label", path=root / "run").fit(frame, config=CONFIG, log=lambda s: None)
            tree_run = api.train(CONFIG, data=str(root / "data"), run_dir=root / "tree-run", progress=False,
                                 log=lambda s: None)
        finally:
            torch.set_num_threads(threads)
    return {"root": root, "pred": pred, "frame": frame, "tree_run": tree_run.run_dir, "test": root / "data" / "test"}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_package_exports_the_predictor_and_the_api():
    assert cnnlab.ImagePredictor is ImagePredictor
    assert cnnlab.train is api.train and cnnlab.evaluate is api.evaluate and cnnlab.predict is api.predict
    with pytest.raises(AttributeError):
        cnnlab.no_such_thing  # noqa: B018
    import subprocess
    import sys

    code = "import sys, cnnlab; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(Path(cnnlab.__file__).parents[1])})
    assert done.stdout.strip() == "False", done.stderr  # import cnnlab stays cheap: the API loads on first use


def test_fit_keeps_the_model_and_writes_a_run_directory(fitted):
    pred = fitted["pred"]
    assert pred.class_names == list(COLOURS)
    assert (pred.path / "model.safetensors").is_file() and (pred.path / "model.json").is_file()
    assert pred.run.metrics["epochs_run"] == 2
    assert pred.tta == "flip" and pred.precision == "fp32" and pred.decode_size == 16
    assert pred.card["spec"]["arch"] == "test_resnet"


def test_predict_proba_is_a_frame_with_one_column_per_class(fitted):
    pred, frame = fitted["pred"], fitted["frame"]
    probs = pred.predict_proba(frame.head(5))
    assert list(probs.columns) == list(COLOURS) and list(probs.index) == list(frame.index[:5])
    np.testing.assert_allclose(probs.to_numpy().sum(1), 1.0, rtol=1e-5)
    labels = pred.predict(frame.head(5))
    assert labels.name == "label" and list(labels) == list(probs.idxmax(axis=1))


def test_every_input_kind_gives_the_same_probabilities(fitted):
    pred, test = fitted["pred"], fitted["test"]
    paths = sorted(str(p) for p in test.rglob("*.png"))
    by_paths = pred.predict_proba(paths).to_numpy()
    by_folder = pred.predict_proba(test).to_numpy()
    array = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    by_array = pred.predict_proba(array).to_numpy()
    by_frame = pred.predict_proba(pd.DataFrame({"image": paths})).to_numpy()
    for other in (by_folder, by_array, by_frame):
        np.testing.assert_allclose(other, by_paths, rtol=1e-5, atol=1e-6)
    assert pred.extract_embedding(paths).shape == (len(paths), pred.model.num_features)


def test_predict_and_evaluate_agree_on_the_same_images(fitted):
    """evaluate's loss and accuracy are those of predict_proba's probabilities (same TTA, precision, size)."""
    run_dir, test = fitted["tree_run"], fitted["test"]
    report = api.evaluate(run_dir, str(test.parent))
    assert report["split"] == "test" and report["tta"] == "flip"
    paths = sorted(test.rglob("*.png"))
    probs, names = api.predict_proba(run_dir, [str(p) for p in paths])
    y = np.array([list(COLOURS).index(p.parent.name) for p in paths])
    assert report["count"] == len(y)
    assert report["loss"] == pytest.approx(float(-np.log(probs[np.arange(len(y)), y]).mean()), rel=1e-5)
    assert report["accuracy"] == pytest.approx(float((probs.argmax(1) == y).mean()))
    no_tta, _ = api.predict_proba(run_dir, [str(p) for p in paths], tta="none")
    assert not np.allclose(no_tta, probs)  # the TTA is really applied, so the agreement above means something
    top = api.predict(run_dir, [str(paths[0])], top_k=1)[0]["top"][0]
    assert top["probability"] == pytest.approx(float(probs[0].max()), rel=1e-5)


def test_repeated_predictions_load_the_weights_once(fitted, monkeypatch):
    import cnnlab.inference.model as inference_module

    calls = []
    real = inference_module.load_model
    monkeypatch.setattr(inference_module, "load_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    pred = ImagePredictor.load(fitted["pred"].path)
    assert calls == []  # loading reads the card; the weights load on first use
    x = np.zeros((2, 16, 16, 3), np.uint8)
    first = pred.predict_proba(x)
    for _ in range(3):
        pred.predict(x)
        pred.evaluate(fitted["frame"].iloc[::6])  # two images of each class
    assert len(calls) == 1
    np.testing.assert_allclose(pred.predict_proba(x).to_numpy(), first.to_numpy())


def test_save_and_load_round_trip_without_pickle(fitted, tmp_path):
    pred = fitted["pred"]
    out = pred.save(tmp_path / "saved")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "history.csv", "metrics.json",
                                                     "model.json", "model.safetensors"]
    back = ImagePredictor.load(out)
    x = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_allclose(back.predict_proba(x).to_numpy(), pred.predict_proba(x).to_numpy(), rtol=1e-5)
    assert back.decode_size == pred.decode_size and back.tta == "flip"
    s = back.summary()
    assert s["arch"] == "test_resnet" and s["num_classes"] == 3 and s["tta"] == "flip"
    assert s["metrics"]["val"]["count"] == pred.run.metrics["val"]["count"]


def test_an_unknown_card_format_is_refused_naming_the_file(fitted, tmp_path):
    out = fitted["pred"].save(tmp_path / "m")
    card = json.loads((out / "model.json").read_text())
    card["format"] = "cnnlab-model/99"
    (out / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=r"model\.json: unknown model card format 'cnnlab-model/99'"):
        ImagePredictor.load(out)


def test_a_predictor_without_a_model_says_so():
    with pytest.raises(ModelError, match="fit"):
        ImagePredictor().predict(np.zeros((1, 8, 8, 3), np.uint8))


def test_fit_with_tuning_data_validates_on_it(fitted, tmp_path):
    frame = fitted["frame"]
    tuning = pd.DataFrame({"image": sorted(str(p) for p in fitted["test"].rglob("*.png"))})
    tuning["label"] = [Path(p).parent.name for p in tuning["image"]]
    pred = ImagePredictor(path=tmp_path / "run").fit(frame, tuning_data=tuning, config=CONFIG, log=lambda s: None)
    assert pred.run.metrics["val"]["count"] == len(tuning) == 12
    assert all("val_accuracy" in h for h in pred.run.fit.history)  # validated every epoch on the tuning data
    assert pred.run.metrics["train_samples"] == len(frame)  # nothing was split off the training data
    assert pred.config.data.source == "<DataFrame>"  # not the default source (cifar10)


def test_predict_and_evaluate_share_the_precision(fitted, monkeypatch):
    """With bf16 resolved (as on an AMX CPU or a GPU), both paths run in it; nobody casts on their own."""
    from cnnlab.utils import hardware

    run_dir, test = fitted["tree_run"], fitted["test"]
    paths = sorted(test.rglob("*.png"))
    fp32 = ImagePredictor.load(run_dir, precision="fp32").predict_proba([str(p) for p in paths]).to_numpy()
    monkeypatch.setenv(hardware.BF16_ENV, "force")  # bf16 on any CPU (emulated where it has none)
    pred = ImagePredictor.load(run_dir, precision="bf16")  # the run's card says fp32: asked for here
    assert pred.precision == "bf16"
    probs = pred.predict_proba([str(p) for p in paths]).to_numpy()
    assert not np.allclose(probs, fp32, rtol=0, atol=1e-7)  # bf16 really ran
    report = pred.evaluate(str(test.parent))
    y = np.array([pred.class_names.index(p.parent.name) for p in paths])
    assert report["precision"] == "bf16"
    assert report["loss"] == pytest.approx(float(-np.log(probs[np.arange(len(y)), y]).mean()), rel=1e-5)


def test_the_cards_tta_is_the_runs_choice(fitted, tmp_path):
    """A recipe that chose its own TTA records it in the card; the predictor uses that, not train.tta."""
    out = fitted["pred"].save(tmp_path / "m")
    assert json.loads((out / "model.json").read_text())["tta"] == "flip"
    card = json.loads((out / "model.json").read_text())
    card["tta"] = "none"
    (out / "model.json").write_text(json.dumps(card))
    assert ImagePredictor.load(out).tta == "none" and ImagePredictor.load(out, tta="flip").tta == "flip"
