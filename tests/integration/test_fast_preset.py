"""CI short mode of the fast recipe: the `fast` preset for 160 steps on a 2,000-image CIFAR-10 subset.

No timing is asserted: the check is that the loss falls and that the test accuracy beats a floor
(45% on the 10,000 test images; one run of these settings measured 60-70% on the shared 2-core
machine), so a broken recipe (no learning, a wrong augmentation, a bad optimiser step) shows up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cnnlab import api
from cnnlab.presets import preset_path

pytestmark = pytest.mark.integration

CIFAR = os.environ.get("CNNLAB_CIFAR10")
if not CIFAR or not Path(CIFAR).exists():
    pytest.skip("CNNLAB_CIFAR10 is not set to the CIFAR-10 copy (../shared/datasets/cifar10-jpeg.tar.gz)",
                allow_module_level=True)

ACCURACY_FLOOR = 0.45
SHORT_MODE = {
    "data.max_train_samples": 2000,  # class-balanced subset
    "train.batch_size": 50,
    "train.epochs": 4,  # 40 steps per epoch
    "train.tta": "none",
    "train.recipe_options.max_train_minutes": 0,  # always the same number of steps
}


def test_fast_preset_short_mode(tmp_path):
    rd = tmp_path / "run"
    run = api.train(preset_path("fast"), overrides=SHORT_MODE, run_dir=rd, progress=False, log=print)
    hist = run.fit.history
    assert len(hist) == 4
    assert hist[-1]["loss"] < hist[0]["loss"] - 0.3, [h["loss"] for h in hist]
    metrics = json.loads((rd / "metrics.json").read_text())
    assert metrics["recipe"] == "fast" and metrics["train_samples"] == 2000
    assert metrics["test"]["count"] == 10_000
    assert metrics["test"]["accuracy"] > ACCURACY_FLOOR, metrics["test"]
    assert (rd / "model.safetensors").is_file() and (rd / "history.csv").is_file()
