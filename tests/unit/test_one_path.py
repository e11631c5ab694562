"""One path from images to probabilities (cnnlab.inference): predict, evaluate, the API, the server
(one request or many, torch backend), the figures written after training and an auto-fit's
reported figures agree on the same images: identical top-1 labels, probabilities within 1e-5.

Each test runs twice: in fp32 (CNNLAB_CPU_BF16=0) and in bf16 forced on any CPU
(CNNLAB_CPU_BF16=force: what a Sapphire Rapids or Zen 4 runs, emulated and slow on a CPU without
bf16, hence the tiny model), so a developer on any machine sees what fails on a bf16 CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab import api
from cnnlab.predictor import ImagePredictor
from cnnlab.utils import hardware

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from cnnlab.serving.app import create_app  # noqa: E402

COLOURS = {"blue": (30, 40, 210), "green": (35, 200, 45), "red": (215, 35, 30)}
CONFIG = {
    "name": "one-path", "seed": 0,
    "data": {"validation_split": 0.25},
    "model": {"arch": "test_resnet", "head": {"pooling": "avg"}},
    "train": {"epochs": 2, "batch_size": 16, "tta": "flip", "optimizer": {"name": "adam", "lr": 3e-3}},
}
TOL = 1e-5


def _write(root: Path, per_class: int, seed: int, size: int = 16) -> None:
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            px = np.clip(np.array(colour) + rng.integers(-90, 91, (size, size, 3)), 0, 255).astype(np.uint8)
            px[: size // 2, : size // 3] = rng.integers(0, 256, 3)  # asymmetric: flip TTA changes the answer
            Image.fromarray(px).save(root / name / f"{i:03d}.png")


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def trained(request, tmp_path_factory):
    """A run trained and evaluated with the precision under test in force (bf16 forced on any CPU)."""
    root = tmp_path_factory.mktemp(f"one-path-{request.param}")
    _write(root / "data" / "train", 10, seed=1)
    _write(root / "data" / "test", 5, seed=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_HOME", str(root / "home"))
        mp.setenv(hardware.BF16_ENV, "force" if request.param == "bf16" else "0")
        run = api.train(CONFIG, data=str(root / "data"), run_dir=root / "run", progress=False, log=lambda s: None)
        yield {"precision": request.param, "run": Path(run.run_dir), "test": root / "data" / "test",
               "metrics": run.metrics}


@pytest.fixture
def in_force(trained, monkeypatch):
    monkeypatch.setenv(hardware.BF16_ENV, "force" if trained["precision"] == "bf16" else "0")
    return trained


def _paths(test: Path) -> list[str]:
    return [str(p) for p in sorted(test.rglob("*.png"))]


def test_predict_evaluate_api_and_the_run_figures_agree(in_force):
    run, paths = in_force["run"], _paths(in_force["test"])
    pred = ImagePredictor.load(run)
    assert pred.precision == in_force["precision"] and pred.tta == "flip"
    probs = pred.predict_proba(paths).to_numpy()
    api_probs, _ = api.predict_proba(run, paths)
    np.testing.assert_allclose(api_probs, probs, rtol=0, atol=TOL)
    ev = pred.evaluate_details(str(in_force["test"].parent))
    order = [paths.index(str(p)) for p in ev.images.paths]
    np.testing.assert_allclose(ev.probabilities, probs[order], rtol=0, atol=TOL)
    assert (ev.probabilities.argmax(1) == probs[order].argmax(1)).all()
    # the figures written after training are what evaluate gives now
    written = in_force["metrics"]["test"]
    assert ev.report["accuracy"] == pytest.approx(written["accuracy"], abs=TOL)
    assert ev.report["loss"] == pytest.approx(written["loss"], abs=TOL)
    assert in_force["metrics"]["inference"]["precision"] == in_force["precision"]


def test_results_do_not_depend_on_how_images_are_grouped(in_force):
    pred = ImagePredictor.load(in_force["run"])
    paths = _paths(in_force["test"])
    together = pred.predict_proba(paths).to_numpy()
    one_by_one = np.concatenate([pred.predict_proba([p]).to_numpy() for p in paths])
    odd_groups = np.concatenate([pred.predict_proba(paths[i:i + 7]).to_numpy() for i in range(0, len(paths), 7)])
    np.testing.assert_allclose(one_by_one, together, rtol=0, atol=TOL)
    np.testing.assert_allclose(odd_groups, together, rtol=0, atol=TOL)


def test_the_server_gives_what_predict_gives(in_force):
    run, paths = in_force["run"], _paths(in_force["test"])
    want = ImagePredictor.load(run).predict_proba(paths)
    with TestClient(create_app(run, backend="torch", max_batch=4)) as client:
        many = client.post("/predict?top_k=3", files=[("files", (Path(p).name, Path(p).read_bytes(), "image/png"))
                                                      for p in paths[:8]]).json()["predictions"]
        single = [client.post("/predict?top_k=3", files=[("files", (Path(p).name, Path(p).read_bytes(), "image/png"))])
                  .json()["predictions"][0] for p in paths[:8]]
    for i, p in enumerate(paths[:8]):
        row = want.iloc[i]
        for got in (many[i], single[i]):
            assert got["top"][0]["label"] == row.idxmax()
            for t in got["top"]:
                assert t["probability"] == pytest.approx(float(row[t["label"]]), abs=TOL)


def test_the_card_records_the_inference_setting_and_the_temperature(in_force):
    card = json.loads((in_force["run"] / "model.json").read_text())
    assert card["inference"]["precision"] == "auto"  # the setting; each machine resolves it
    assert card["temperature"] == pytest.approx(in_force["metrics"]["calibration"]["temperature"])
    pred = ImagePredictor.load(in_force["run"])
    x = np.zeros((3, 16, 16, 3), np.uint8)
    raw = pred.inference.raw_logits(x)
    torch.testing.assert_close(pred.logits(x), raw / card["temperature"])
