"""The fast recipe resumes after SIGKILL, stops early and keeps its best checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cnnlab import api

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**train) -> dict:
    cfg = {
        "name": "fast-resume", "seed": 3, "data": {"validation_split": 0.25},
        "model": {"arch": "cifar_fastnet", "preprocessing": "keras_tf", "head": {"pooling": "max"},
                  "kwargs": {"widths": [8, 16, 16]}},
        "train": {"recipe": "fast", "epochs": 6, "batch_size": 12, "precision": "fp32",
                  "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.85, "nesterov": True},
                  "schedule": {"name": "linear", "warmup_epochs": 1}, "label_smoothing": 0.2,
                  "augment": {"crop_padding": 2, "flip": True}, "checkpoint": {"monitor": "val_accuracy"},
                  "recipe_options": {"optimizer": "muon", "workers": 1}},
    }
    cfg["train"].update(train)
    return cfg


KILLER = textwrap.dedent("""
    import os, signal, sys, yaml
    from cnnlab import api
    cfg = yaml.safe_load(open(sys.argv[1]))
    def kill_after_third_epoch(epoch, logs):
        if epoch == 2:  # epoch 3's logs are out, its state not yet saved: it will be redone
            os.kill(os.getpid(), signal.SIGKILL)
    api.train(cfg, data=sys.argv[2], run_dir=sys.argv[3], progress=False, epoch_callback=kill_after_third_epoch)
""")


def test_killed_run_resumes_to_the_same_weights(tiny_tree, tmp_path):
    cfg = _cfg()
    whole = api.train(cfg, data=str(tiny_tree), run_dir=tmp_path / "whole", progress=False, log=lambda s: None,
                      evaluate_test=False)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    rd = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILLER, str(tmp_path / "cfg.yaml"), str(tiny_tree), str(rd)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    state = json.loads((rd / "state" / "train_state.json").read_text())
    assert state["epoch"] == 1  # epochs 1 and 2 were saved; 3 was in progress
    assert not (rd / "model.safetensors").exists()
    logs: list[str] = []
    resumed = api.resume(rd, data=str(tiny_tree), progress=False, log=logs.append)
    assert any("resuming" in line and "after epoch 2" in line for line in logs)
    assert [h["epoch"] for h in resumed.fit.history] == [1, 2, 3, 4, 5, 6]
    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(rd / "model.safetensors"))
    assert a.keys() == b.keys()
    # Same seed, same thread count, same operators: the same weights to float32 rounding.
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert not (rd / "state").exists()  # a finished run drops its resume state
    assert whole.fit.history[-1]["val_accuracy"] == pytest.approx(resumed.fit.history[-1]["val_accuracy"])


def test_best_checkpoint_and_early_stopping(tiny_tree, tmp_path):
    cfg = _cfg(epochs=30, early_stopping={"monitor": "val_loss", "patience": 2, "min_delta": 10.0})
    run = api.train(cfg, data=str(tiny_tree), run_dir=tmp_path / "r", progress=False, log=lambda s: None)
    # min_delta 10 never counts as an improvement after the first epoch: stops after 1 + patience
    assert run.fit.epochs_run == 3 and run.fit.stopped_early
    assert "early stopping" in run.fit.stop_reason
    assert (tmp_path / "r" / "best.safetensors").is_file()
    accs = [h["val_accuracy"] for h in run.fit.history]
    assert run.fit.best_epoch == accs.index(max(accs)) + 1


@pytest.mark.parametrize("key,value", [("finetune", {"epochs": 1}), ("augment", {"cutout": 8}),
                                       ("cache_features", "on")])
def test_settings_the_recipe_would_ignore_are_refused_before_anything_is_written(tiny_tree, tmp_path, key, value):
    from cnnlab.errors import ConfigError

    with pytest.raises(ConfigError, match="not used by the fast recipe") as err:
        api.train(_cfg(**{key: value}), data=str(tiny_tree), run_dir=tmp_path / "r", progress=False)
    assert f"train.{key}" in str(err.value)
    assert not (tmp_path / "r").exists()
