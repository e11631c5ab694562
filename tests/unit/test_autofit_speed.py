"""The planner measures what it runs (autofit/speed.py): the fast recipe's own step and width
ladder (its measurements handed to the run, which does not time them again), the frozen base's
feature extraction and the standard recipe's fine-tuning epoch; plan.json's actual speeds."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from cnnlab.autofit import speed
from cnnlab.autofit.candidates import build_config
from cnnlab.data.dataset import ImageArrays

CLASSES = ["a", "b", "c"]


def _images(n: int, side: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, size=(n, side, side, 3), dtype=np.uint8), rng.integers(0, 3, size=n)


def test_the_fast_net_is_measured_with_its_own_ladder_and_the_run_reuses_it(tmp_path, monkeypatch):
    from cnnlab.models.registry import create_model
    from cnnlab.training.recipes import fast_plan
    from cnnlab.training.recipes.fast_options import options
    from cnnlab.training.recipes.fast_parts import Workers
    from cnnlab.training.rundir import RunDir
    from cnnlab.utils.hardware import choose_precision, default_device

    x, y = _images(64)
    cfg = build_config("fastnet", seconds=20, epochs=1)
    ladder = speed.measure_fastnet(cfg, x, y, CLASSES, budget_seconds=2, n_train=64, n_eval=16)
    ips, measured = ladder.images_per_second, ladder.measured
    assert measured and ips > 0
    # the planner's view of other budgets: the same ladder, no new measurement
    assert ladder(2 / (1 - 0.15))[0] == pytest.approx(ips) and ladder(0.01)[1] in [w[0] for w in fast_plan.WIDTH_LADDER]
    assert [tuple(m["widths"]) for m in measured] == list(fast_plan.WIDTH_LADDER[:len(measured)])  # narrowest first
    assert ips in [m["images_per_second"] for m in measured] or len(measured) < len(fast_plan.WIDTH_LADDER)

    # the run: every width "measured" by the planner at a rate the run's own timing could not give;
    # the run plans with those figures and times no step itself
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    batch = measured[0]["batch"]
    given = [{"widths": list(w), "batch": batch, "images_per_second": 100.0 + i}
             for i, w in enumerate(fast_plan.WIDTH_LADDER)]
    (rd.path / fast_plan.MEASURED).write_text(json.dumps(given))
    monkeypatch.setattr(fast_plan, "measure_images_per_second", lambda *a, **k: pytest.fail("timed again"))
    device = default_device()
    run_cfg = build_config("fastnet", seconds=2, epochs=1)
    workers = Workers(1)
    try:
        _, _, plan, _ = fast_plan.plan_run(run_cfg, create_model(run_cfg.model, CLASSES), ImageArrays(x, y, CLASSES),
                                           16, options(run_cfg.train.recipe_options), device,
                                           choose_precision("auto", device), workers, time.monotonic(), rd,
                                           lambda s: None)
    finally:
        workers.close()
    assert plan is not None and plan.images_per_second in [g["images_per_second"] for g in given]


@pytest.mark.parametrize("kind", ["frozen", "finetune_last"])
def test_pretrained_candidates_are_measured_by_the_code_that_trains_them(kind, monkeypatch):
    from cnnlab.training import features
    from cnnlab.training.recipes import standard as loop

    x, y = _images(40 if kind == "finetune_last" else 12)
    calls: list[str] = []
    real_extract, real_epoch = features.extract_features, loop._Standard.train_epoch

    def extract(*a, **k):
        calls.append(f"features batch {k.get('batch_size', 64)}")
        return real_extract(*a, **k)

    def epoch(self, e):
        calls.append(f"epoch of {len(self.y)} at batch {self.tc.batch_size}")
        return real_epoch(self, e)

    monkeypatch.setattr(features, "extract_features", extract)
    monkeypatch.setattr(loop._Standard, "train_epoch", epoch)
    cfg = build_config(kind, seconds=60, epochs=1)
    ips = speed.measure(kind, cfg, x, y, CLASSES)
    assert ips > 0
    if kind == "frozen":  # the run's extraction batch
        assert calls[-1] == f"features batch {speed.FEATURE_BATCH}"
    else:  # the standard recipe's own epoch at the candidate's batch, after a warm-up batch
        assert calls == ["epoch of 32 at batch 32", "epoch of 40 at batch 32"]


def test_actual_speed_reads_the_runs_metrics():
    from cnnlab.autofit.runner import actual_speed

    assert actual_speed({"train_images_per_second": 812.34}, 100) == 812.3
    assert actual_speed({"feature_cache": "miss", "feature_seconds": 4.0, "train_images_per_second": 9e4}, 200) == 50.0
    assert actual_speed({"feature_cache": "hit", "feature_seconds": 0.1}, 200) is None
