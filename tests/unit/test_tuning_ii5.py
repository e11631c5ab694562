"""The study's Model II.5 search on real CIFAR-10, cut down to a couple of short trials."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from cnnlab.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
II5 = ROOT / "experiments" / "mobilenet" / "II.5.yaml"

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def cifar10():
    path = os.environ.get("CNNLAB_CIFAR10")
    if not path:
        pytest.skip("CNNLAB_CIFAR10 is not set (the CIFAR-10 copy, e.g. ../shared/datasets/cifar10-jpeg.tar.gz)")
    if not Path(path).exists():
        pytest.skip(f"CNNLAB_CIFAR10={path} does not exist")
    return path


def test_ii5_search_runs_on_cifar10_and_tests_the_best_trial(cifar10, tmp_path, monkeypatch):
    import torch

    from cnnlab.tuning import tune

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    out = tmp_path / "ii5"
    result = tune(II5, overrides={"train.epochs": 1, "data.max_train_samples": 300,
                                  "data.validation_split": 0.01},
                  trials=2, sampler="random", final_fit="none", out=out, epoch_log=False, log=lambda s: None)
    s = json.loads((out / "summary.json").read_text())
    assert s["study_name"] == "mobilenet-II.5" and s["trials_requested"] == 2
    assert s["counts"]["slots"] == 2 and s["counts"]["completed"] == 2
    assert 0.0 < result.best_value <= 1.0
    # Each trial trained MobileNet v1 with values drawn from the study's grid.
    for row in s["trials"]:
        cfg = load_config(out / "trials" / f"trial-{row['number']:04d}" / "config.yaml")
        assert cfg.model.arch == "mobilenetv1_100" and cfg.train.schedule.name == "exponential"
        assert cfg.model.head.units in range(256, 897, 128)
        assert cfg.train.schedule.decay_steps in range(3000, 10001, 1000)
        assert cfg.train.early_stopping.patience == 3 and cfg.seed == 42
        assert cfg.data.max_train_samples == 300
    # The best trial's own model was tested on the official 10,000 test images.
    f = s["final_fit"]
    assert f["status"] == "done" and f["test"]["count"] == 10_000
    assert 0.0 <= f["test"]["accuracy"] <= 1.0
