"""The auto-fit time-limit contract on a CIFAR-10 subset: the whole fit (decoding the folder,
planning, training, ensembling, final evaluation, report) ends within time_limit x 1.05.

One module-scoped subset (3,000 training and 1,000 test images of CIFAR-10 written as a PNG
folder with train/ and test/ subtrees), fitted with limits of 1 and 3 minutes. The elapsed time
asserted is the fit's own record (fit.json), measured from the call to ``fit``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.integration

CIFAR = os.environ.get("CNNLAB_CIFAR10")
if not CIFAR or not Path(CIFAR).exists():
    pytest.skip("CNNLAB_CIFAR10 is not set to the CIFAR-10 copy (../shared/datasets/cifar10-jpeg.tar.gz)",
                allow_module_level=True)

TRAIN, TEST = 3000, 1000


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cnnlab.data.sources import load_source
    from cnnlab.data.split import limit_samples

    bundle = load_source("cifar10")
    root = tmp_path_factory.mktemp("cifar-subset")
    train = limit_samples(bundle.train, TRAIN, seed=0)
    test = bundle.test.subset(np.arange(TEST))
    for split, arrays in (("train", train), ("test", test)):
        for i, (x, y) in enumerate(zip(arrays.x, arrays.y)):
            folder = root / split / arrays.class_names[y]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x).save(folder / f"{i:05d}.png")
    return root


@pytest.mark.parametrize("minutes", [1, 3])
def test_fit_ends_within_the_time_limit(subset, tmp_path, minutes):
    from cnnlab import ImagePredictor

    limit = 60 * minutes
    pred = ImagePredictor(label="label", path=tmp_path / "fit").fit(str(subset), time_limit=limit)
    info = json.loads((tmp_path / "fit" / "fit.json").read_text())
    assert info["elapsed_seconds"] <= limit * 1.05, info["elapsed_seconds"]
    assert info["profile"]["count"] + info["profile"]["val_count"] == TRAIN
    assert info["profile"]["test_count"] == TEST
    plan = json.loads((tmp_path / "fit" / "plan.json").read_text())
    assert plan["probe_seconds"] <= 0.05 * limit + 1.0  # the last probe may run a little past its share
    done = [c for c in plan["candidates"] if c["status"] == "done"]
    assert done and all(c["chosen"] and c["actual_seconds"] > 0 for c in done)
    for c in done:
        if c["kind"] == "fastnet":  # the width the planner picked (and predicted the speed of) trained
            run_plan = json.loads((tmp_path / "fit" / "models" / "fastnet" / "plan.json").read_text())
            assert "auto-fit planner" in run_plan["reason"], run_plan["reason"]
            import yaml

            given = yaml.safe_load((tmp_path / "fit" / "models" / "fastnet" / "config.yaml").read_text())
            assert run_plan["widths"] == given["train"]["recipe_options"]["widths"]
    board = pred.leaderboard()
    assert set(c["kind"] for c in done) <= set(board["model"])
    assert board["val_accuracy"].is_monotonic_decreasing
    assert info["test_accuracy"] > 0.25, info["leaderboard"]  # chance is 0.10
    assert pred.evaluate(str(subset))["accuracy"] == pytest.approx(info["test_accuracy"], abs=1e-6)
    report = (tmp_path / "fit" / "report.md").read_text()
    assert "Plan against what happened" in report and "## Leaderboard" in report
