"""Sizing the fast recipe for the machine (training/recipes/fast_plan.py)."""

from __future__ import annotations

import json

import pytest
import yaml

from cnnlab import api
from cnnlab.config import config_from_dict
from cnnlab.models.io import read_card
from cnnlab.training.recipes import fast_plan
from cnnlab.training.recipes.fast_plan import MAX_EPOCHS, TARGET_EPOCHS, WIDTH_LADDER, make_plan, planned_batch

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(tta: str = "flip_translate", batch: int = 512):
    return config_from_dict({"model": {"arch": "cifar_fastnet", "kwargs": {"widths": [64, 256, 256]}},
                             "train": {"recipe": "fast", "batch_size": batch, "tta": tta,
                                       "optimizer": {"name": "sgd", "lr": 1.0}}})


def _flops(widths):
    return 1e9 * (widths[1] / 256) ** 2  # the cost grows with the square of the width


def _machine(gflops: float):
    """A fake machine that trains at ``gflops`` GFLOP/s whatever the width; records what was measured."""
    measured = []

    def measure(widths, batch):
        measured.append(widths)
        return gflops * 1e9 / _flops(widths)
    return measure, measured


def test_picks_the_widest_net_that_gets_the_target_epochs():
    measure, measured = _machine(100)  # [64,256,256] at 100 img/s
    # 600 s, 50,000 images: [32,128,128] at 400 img/s = 4.8 epochs, [24,96,96] at 711 img/s = 8.5
    plan = make_plan(_cfg(), 50_000, 10_000, 600, 660, measure, _flops, "fp32")
    assert plan.widths == [24, 96, 96]
    assert plan.total_steps == 833 and plan.epochs == 9  # 8.59 epochs of 97 steps: the last one partial
    assert plan.estimated_train_seconds <= 600
    assert measured == [WIDTH_LADDER[0], WIDTH_LADDER[1]]  # stops measuring once a width falls short
    # a 5x faster machine (bf16): the published width gets its 8 epochs (9.06) in 15 minutes
    measure, _ = _machine(500)
    plan = make_plan(_cfg(), 50_000, 10_000, 900, 990, measure, _flops, "bf16")
    assert plan.widths == [64, 256, 256] and TARGET_EPOCHS <= plan.epochs <= MAX_EPOCHS
    assert plan.estimated_train_seconds <= 900


def test_a_tiny_budget_gets_the_narrowest_net_for_what_fits():
    measure, _ = _machine(10)
    plan = make_plan(_cfg(), 50_000, 10_000, 60, 70, measure, _flops, "fp32")
    assert plan.widths == list(WIDTH_LADDER[0]) and plan.epochs == 1
    assert plan.total_steps == 8  # 60 s at 71 img/s: 8 of an epoch's 97 steps
    assert "narrowest" in plan.reason


def test_a_huge_budget_caps_the_epochs_at_the_widest_net():
    measure, _ = _machine(1e6)
    plan = make_plan(_cfg(), 50_000, 10_000, 3600, 4000, measure, _flops, "bf16")
    assert plan.widths == list(WIDTH_LADDER[-1]) and plan.epochs == MAX_EPOCHS
    assert plan.total_steps == MAX_EPOCHS * plan.steps_per_epoch


def test_tta_views_shrink_to_fit_the_evaluation_share():
    measure, _ = _machine(100)
    fast = lambda widths: 2000.0  # noqa: E731  inference images/s, as measured at the inference micro-batch
    # generous: 10,000 images x 6 views at 2,000 img/s = 30 s, within 5% of 1,000 s
    assert make_plan(_cfg(), 50_000, 10_000, 900, 1000, measure, _flops, "fp32", measure_inference=fast
                     ).tta == "flip_translate"
    # tight: 6 views would take 30 s, 2 views 10 s; 5% of 300 s is 15 s
    assert make_plan(_cfg(), 50_000, 10_000, 270, 300, measure, _flops, "fp32", measure_inference=fast
                     ).tta == "flip"
    # never more views than the config asks for
    assert make_plan(_cfg(tta="none"), 50_000, 10_000, 900, 1000, measure, _flops, "fp32", measure_inference=fast
                     ).tta == "none"


def test_the_evaluation_is_planned_from_the_measured_inference_speed():
    measure, _ = _machine(100)
    estimated = make_plan(_cfg(), 50_000, 10_000, 900, 1000, measure, _flops, "fp32")
    assert estimated.inference_images_per_second is None  # not measured: INFER_FACTOR x training's rate
    assert estimated.estimated_eval_seconds == pytest.approx(
        10_000 * fast_plan.TTA_VIEWS[estimated.tta] / (fast_plan.INFER_FACTOR * estimated.images_per_second))
    seen = []
    slow = lambda widths: seen.append(tuple(widths)) or 500.0  # noqa: E731
    plan = make_plan(_cfg(), 50_000, 10_000, 900, 1000, measure, _flops, "fp32", measure_inference=slow)
    assert seen == [tuple(plan.widths)]  # measured once, for the picked net
    assert plan.inference_images_per_second == 500.0
    # 6 views of 10,000 images at 500 img/s = 120 s > 5% of 1,000 s; 2 views = 40 s fit
    assert plan.tta == "flip" and plan.estimated_eval_seconds == pytest.approx(40.0)


def test_small_data_sets_get_a_smaller_batch_and_a_scaled_learning_rate():
    assert planned_batch(512, 50_000) == 512
    assert planned_batch(512, 2_000) == 64  # 2,000 // 128 = 15 steps < 16; 64 gives 31
    assert planned_batch(512, 40) == 40
    measure, _ = _machine(100)
    plan = make_plan(_cfg(), 2_000, 500, 600, 660, measure, _flops, "fp32")
    assert plan.batch_size == 64 and plan.lr_scale == pytest.approx(64 / 512)
    assert fast_plan.apply_plan(_cfg(), plan).train.optimizer.lr == pytest.approx(64 / 512)


def test_a_run_with_a_time_limit_is_planned_and_its_folder_describes_the_planned_model(tiny_tree, tmp_path):
    cfg = {
        "name": "planned", "seed": 0, "data": {"validation_split": 0.0},
        "model": {"arch": "cifar_fastnet", "preprocessing": "keras_tf", "head": {"pooling": "max"},
                  "kwargs": {"widths": [64, 256, 256]}},
        "train": {"recipe": "fast", "epochs": 3, "batch_size": 16, "precision": "fp32", "tta": "flip",
                  "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.85, "nesterov": True},
                  "schedule": {"name": "linear", "warmup_epochs": 0.5},
                  "recipe_options": {"size": "auto", "time_limit_minutes": 0.5, "workers": 1,
                                     "heartbeat_seconds": 1e-6}},
    }
    logs: list[str] = []
    rd = tmp_path / "run"
    run = api.train(cfg, data=str(tiny_tree), run_dir=rd, progress=False, log=logs.append)
    plan = json.loads((rd / "plan.json").read_text())
    assert plan["candidates"] and plan["candidates"][0]["images_per_second"] > 0
    assert plan["widths"] in [list(w) for w in WIDTH_LADDER]
    assert any(line.startswith("plan: width") for line in logs)
    assert any("min of training left" in line for line in logs)  # the heartbeat within an epoch
    saved = yaml.safe_load((rd / "config.yaml").read_text())
    assert saved["model"]["kwargs"]["widths"] == plan["widths"]  # the folder describes the planned net
    assert read_card(rd)["spec"]["kwargs"]["widths"] == plan["widths"]
    assert run.metrics["plan"]["widths"] == plan["widths"]
    assert run.fit.epochs_run >= 1


def test_a_width_chosen_by_the_auto_fit_planner_is_the_width_that_trains():
    from cnnlab.autofit.candidates import build_config
    from cnnlab.training.recipes.fast_options import options

    measure, measured = _machine(100)
    free = make_plan(_cfg(), 50_000, 10_000, 600, 660, measure, _flops, "fp32")
    pinned = make_plan(_cfg(), 50_000, 10_000, 600, 660, measure, _flops, "fp32", ladder=((64, 256, 256),))
    assert free.widths != [64, 256, 256]  # left to itself the recipe would pick a narrower net here
    assert pinned.widths == [64, 256, 256] and "auto-fit planner" in pinned.reason
    assert pinned.images_per_second == pytest.approx(100.0)  # 100 GFLOP/s over [64,256,256]'s FLOPs
    assert pinned.epochs == -(-pinned.total_steps // pinned.steps_per_epoch) and pinned.total_steps >= 1
    cfg = build_config("fastnet", seconds=120, epochs=1, widths=(48, 192, 192))
    assert options(cfg.train.recipe_options)["widths"] == [48, 192, 192]
    assert options(build_config("fastnet", seconds=120, epochs=1).train.recipe_options)["widths"] is None
