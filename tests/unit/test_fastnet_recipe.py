"""The fast recipe (training/recipes/fast.py) end to end on a tiny synthetic image tree."""

from __future__ import annotations

import json

import pytest
import torch

from cnnlab import api
from cnnlab.errors import ConfigError
from cnnlab.models.io import load_model
from cnnlab.training.recipes.fast import alternating_flip, options

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**train):
    cfg = {
        "name": "fast-test", "seed": 0,
        "data": {"validation_split": 0.25},
        "model": {"arch": "cifar_fastnet", "preprocessing": "keras_tf", "head": {"pooling": "max"},
                  "kwargs": {"widths": [16, 32, 32]}},
        "train": {"recipe": "fast", "epochs": 4, "batch_size": 16, "precision": "fp32",
                  "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.85, "nesterov": True},
                  "schedule": {"name": "linear", "warmup_epochs": 1},
                  "label_smoothing": 0.2, "augment": {"crop_padding": 2, "flip": True},
                  "recipe_options": {"optimizer": "muon", "muon_lr": 0.1, "workers": 2}},
    }
    cfg["train"].update(train)
    return cfg


def test_trains_and_leaves_a_normal_run_directory(tiny_tree, tmp_path):
    rd = tmp_path / "run"
    run = api.train(_cfg(), data=str(tiny_tree), run_dir=rd, progress=False, log=lambda s: None)
    for name in ("config.yaml", "history.csv", "model.safetensors", "model.json", "metrics.json"):
        assert (rd / name).is_file(), name
    metrics = json.loads((rd / "metrics.json").read_text())
    assert metrics["recipe"] == "fast" and metrics["workers"] == 2 and metrics["epochs_run"] == 4
    assert metrics["train_gflop_per_image"] > 0
    hist = run.fit.history
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert "val_accuracy" in hist[-1]  # the validation split is watched every epoch
    assert metrics["val"]["accuracy"] >= 0.9  # the classes are three plain colours
    # evaluate / predict read the run like any other
    report = api.evaluate(rd, str(tiny_tree), tta="flip_translate")
    assert report["accuracy"] >= 0.9
    model = load_model(rd)
    assert type(model.backbone).__name__ == "FastNet"


def test_same_seed_same_weights_with_two_workers(tiny_tree, tmp_path):
    cfg = _cfg(epochs=2)
    states = []
    for k in range(2):
        run = api.train(cfg, data=str(tiny_tree), run_dir=tmp_path / f"r{k}", progress=False,
                        log=lambda s: None, evaluate_test=False)
        states.append(run.fit.model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_sgd_only_and_one_worker(tiny_tree, tmp_path):
    cfg = _cfg(recipe_options={"optimizer": "sgd", "workers": 1, "lookahead_decay": 0})
    run = api.train(cfg, data=str(tiny_tree), run_dir=tmp_path / "r", progress=False, log=lambda s: None)
    assert run.metrics["workers"] == 1
    assert run.fit.history[-1]["loss"] < run.fit.history[0]["loss"]


def test_target_accuracy_stops_training(tiny_tree, tmp_path):
    # A target the first epoch cannot reach but a later one does: training stops at that epoch.
    full = api.train(_cfg(epochs=6), data=str(tiny_tree), run_dir=tmp_path / "full", progress=False,
                     log=lambda s: None, evaluate_test=False)
    accs = [h["val_accuracy"] for h in full.fit.history]
    if accs[0] >= max(accs):
        pytest.skip(f"the first epoch already reached the best validation accuracy {accs}")
    target = max(accs)
    run = api.train(_cfg(epochs=6, target_accuracy=target), data=str(tiny_tree), run_dir=tmp_path / "r",
                    progress=False, log=lambda s: None, evaluate_test=False)
    assert run.fit.epochs_run == accs.index(target) + 1
    assert run.fit.stopped_early and "reached target val_accuracy" in run.fit.stop_reason
    assert [h["val_accuracy"] for h in run.fit.history] == accs[: run.fit.epochs_run]  # the same run, cut short


def test_time_budget_shortens_training(tiny_tree, tmp_path):
    logs = []
    cfg = _cfg(recipe_options={"max_train_minutes": 1e-6, "workers": 1})
    run = api.train(cfg, data=str(tiny_tree), run_dir=tmp_path / "r", progress=False, log=logs.append)
    assert run.metrics["epochs_run"] == 1
    assert any(line.startswith("time budget:") for line in logs)


def test_options_are_checked():
    assert options({})["optimizer"] == "sgd"
    assert options({"muon_lr": 1})["muon_lr"] == 1.0
    with pytest.raises(ConfigError, match="unknown config key train.recipe_options.muon_rate; did you mean 'muon_lr'"):
        options({"muon_rate": 0.1})
    with pytest.raises(ConfigError, match="optimizer"):
        options({"optimizer": "adam"})
    with pytest.raises(ConfigError, match="expected a number"):
        options({"muon_lr": "fast"})
    with pytest.raises(ConfigError, match=r"train.recipe_options.workers must be an integer >= 0; got -1"):
        options({"workers": -1})
    with pytest.raises(ConfigError, match=r"train.recipe_options.workers: expected an integer, got 1.5"):
        options({"workers": 1.5})
    with pytest.raises(ConfigError, match=r"lookahead_decay must be a number in \[0, 1\); got 1.0"):
        options({"lookahead_decay": 1.0})


def test_the_monitor_tta_choices_are_the_evaluations():
    import typing

    from cnnlab.evaluation.predict import TTA_MODES
    from cnnlab.training.recipes.fast_options import FastOptions

    assert typing.get_args(typing.get_type_hints(FastOptions)["monitor_tta"]) == TTA_MODES


def test_the_standard_recipe_refuses_recipe_options(tiny_tree, tmp_path):
    cfg = _cfg(recipe_options={"workers": 1})
    cfg["train"]["recipe"] = "standard"
    with pytest.raises(ConfigError, match=r"train.recipe_options.workers: the standard recipe .* has no options"):
        api.train(cfg, data=str(tiny_tree), run_dir=tmp_path / "r", progress=False, log=lambda s: None)
    assert not (tmp_path / "r").exists()


def test_the_recipe_needs_sgd(tiny_tree, tmp_path):
    cfg = _cfg()
    cfg["train"]["optimizer"]["name"] = "adam"
    with pytest.raises(ConfigError, match="sgd"):
        api.train(cfg, data=str(tiny_tree), run_dir=tmp_path / "r", progress=False, log=lambda s: None)


def test_alternating_flip_flips_each_image_every_other_epoch():
    x = torch.arange(2 * 3 * 2 * 4, dtype=torch.uint8).view(2, 3, 2, 4)
    idx = torch.tensor([5, 9])
    first = torch.zeros(10, dtype=torch.bool)
    first[5] = True  # image 5 was flipped in the first epoch, image 9 was not
    e0, e1, e2 = (alternating_flip(x, idx, first, e) for e in range(3))
    assert torch.equal(e0[0], x[0].flip(2)) and torch.equal(e0[1], x[1])
    assert torch.equal(e1[0], x[0]) and torch.equal(e1[1], x[1].flip(2))
    assert torch.equal(e2, e0)


def test_the_preset_and_experiment_files_load():
    from cnnlab.config import load_config
    from cnnlab.presets import preset_path

    preset = load_config(preset_path("fast"))
    assert preset.train.recipe == "fast" and preset.model.arch == "cifar_fastnet"
    assert options(preset.train.recipe_options)["optimizer"] == "muon"
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "experiments" / "fast"
    for path in sorted(root.glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.train.recipe == "fast", path
        options(cfg.train.recipe_options)
