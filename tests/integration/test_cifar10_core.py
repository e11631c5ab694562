"""The core pipeline on the real CIFAR-10 copy (../shared): load, inspect, train, evaluate, predict."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cnnlab import api
from cnnlab.cli.main import main

pytestmark = pytest.mark.integration

CIFAR = os.environ.get("CNNLAB_CIFAR10")
if not CIFAR or not Path(CIFAR).exists():
    pytest.skip("CNNLAB_CIFAR10 is not set to the CIFAR-10 copy (../shared/datasets/cifar10-jpeg.tar.gz)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    # One decoded-pixel cache for the whole module (the first load decodes 60,000 JPEGs).
    return tmp_path_factory.mktemp("home")


def test_load_twice_hits_the_cache(home, monkeypatch):
    monkeypatch.setenv("CNNLAB_HOME", str(home))
    first = api.load_data("cifar10")
    assert first.train.x.shape == (50_000, 32, 32, 3) and first.test.x.shape == (10_000, 32, 32, 3)
    assert first.train.class_counts() == {c: 5000 for c in first.class_names}
    assert first.class_names[0] == "airplane" and first.class_names[-1] == "truck"
    second = api.load_data("cifar10")
    assert second.info["cache"] == "hit"
    assert np.array_equal(first.train.x[:100], second.train.x[:100])


def test_inspect_cifar10(home, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CNNLAB_HOME", str(home))
    assert main(["data", "inspect", "cifar10", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "(50000, 32, 32, 3)" in out and "(10000, 32, 32, 3)" in out and "0..255" in out
    assert (tmp_path / "example_images.png").stat().st_size > 10_000


def test_train_mobilenet_subset_then_evaluate_and_predict(home, monkeypatch, tmp_path, capsys):
    """Model I's config on 3,000 images for 2 epochs: a short run must beat chance clearly.

    Chance is 10%; on 10,000 test images a model at chance stays within 10% +- 1% (3 sigma),
    so 13% means it learned something real."""
    monkeypatch.setenv("CNNLAB_HOME", str(home))
    run_dir = tmp_path / "run"
    code = main(["train", "--config", "experiments/mobilenet/I.yaml", "--epochs", "2",
                 "--max-train-samples", "3000", "--set", "data.validation_split=0.02",
                 "--run-dir", str(run_dir), "--no-progress"])
    assert code == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and metrics["test"]["count"] == 10_000
    assert metrics["test"]["accuracy"] > 0.13, metrics["test"]
    history = (run_dir / "history.csv").read_text().splitlines()
    assert len(history) == 3
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)
    assert len(report["per_class"]) == 10
    assert main(["predict", str(run_dir), str(Path(__file__)), "--format", "json"]) == 2  # not an image
