"""`cnnlab train` killed with SIGKILL in the middle of an epoch, then `cnnlab train --resume`."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")


SRC = Path(__file__).resolve().parents[2] / "src"
EPOCHS = 5
COMPARED = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr")


pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = """\
name: resume-test
seed: 0
data:
  source: {data}
  validation_split: 0.2
model:
  arch: test_resnet
  head: {{pooling: max}}
train:
  epochs: {epochs}
  batch_size: 8
  precision: fp32
  optimizer: {{name: adam, lr: 1.0e-3}}
  schedule: {{name: exponential, decay_steps_fraction: 0.5, decay_rate: 0.5}}
  checkpoint: {{monitor: val_loss}}
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"  # same arithmetic in every process, and no fight over 2 cores
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cnnlab.cli.main", *args]


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def setup(tmp_path, make_tree, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = make_tree(tmp_path / "data", per_class=40, size=(16, 16), seed=5)
    config = tmp_path / "resume.yaml"
    config.write_text(CONFIG.format(data=data, epochs=EPOCHS))
    return config, data


def test_sigkill_mid_epoch_then_resume(tmp_path, setup):
    config, data = setup
    run = tmp_path / "run"
    history = run / "history.csv"
    proc = subprocess.Popen(_cli("train", "--config", str(config), "--run-dir", str(run), "--no-progress"),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while len(_rows(history)) < 2:
            if proc.poll() is not None:
                pytest.fail(f"training ended before it could be killed:\n{proc.stdout.read()}")
            if time.monotonic() > deadline:
                pytest.fail("no second epoch within 240 s")
            time.sleep(0.02)
        # Kill in the middle of the next epoch: about 40% of an epoch's duration later.
        epoch_seconds = float(_rows(history)[-1]["seconds"])
        time.sleep(min(5.0, 0.4 * epoch_seconds))
        assert proc.poll() is None, "the run finished before the kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    before = history.read_text().splitlines()
    rows_before = _rows(history)
    assert 2 <= len(rows_before) < EPOCHS
    committed = json.loads((run / "state" / "train_state.json").read_text())["epoch"] + 1
    # The state is saved right after history.csv, so at most the very last row may be ahead of it.
    assert committed in (len(rows_before), len(rows_before) - 1)
    assert not (run / "model.safetensors").exists()
    assert not (run / "metrics.json").exists()

    done = subprocess.run(_cli("train", "--resume", str(run), "--no-progress"), env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resuming {run} after epoch {committed} of {EPOCHS}" in done.stdout

    rows = _rows(history)
    epochs = [int(float(r["epoch"])) for r in rows]
    assert epochs == list(range(1, EPOCHS + 1))  # every epoch once, none twice, none missing
    after = history.read_text().splitlines()
    assert after[0] == before[0]  # same columns
    assert after[1:committed + 1] == before[1:committed + 1]  # finished epochs are untouched, byte for byte
    for name in ("model.safetensors", "model.json", "metrics.json", "best.safetensors", "figures/curves.png"):
        assert (run / name).is_file(), name
    assert not (run / "state").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_run"] == EPOCHS

    # The resumed run is the same run: an uninterrupted one logs the same numbers for every epoch
    # (everything is seeded per epoch and the optimiser state is restored; fp32 on one thread).
    from cnnlab import api

    api.train(str(config), run_dir=tmp_path / "whole", progress=False, log=lambda s: None, evaluate_test=False)
    reference = _rows(tmp_path / "whole" / "history.csv")
    assert len(reference) == EPOCHS
    for got, want in zip(rows, reference):
        for key in COMPARED:
            assert float(got[key]) == pytest.approx(float(want[key]), rel=1e-6, abs=1e-7), (got["epoch"], key)


# ------------------------------------------------------------------ the same, in process


def _arrays(per_class: int, seed: int):
    import numpy as np

    from cnnlab.data.dataset import ImageArrays

    rng = np.random.default_rng(seed)
    colours = np.array([(30, 40, 210), (35, 200, 45), (215, 35, 30)], dtype=np.int16)
    y = np.repeat(np.arange(3), per_class)
    x = np.clip(colours[y][:, None, None, :] + rng.integers(-20, 21, (len(y), 16, 16, 3)), 0, 255)
    order = rng.permutation(len(y))
    return ImageArrays(x[order].astype(np.uint8), y[order], ["blue", "green", "red"])


class _Interrupt(Exception):
    pass


def test_interrupted_fit_resumes_to_the_same_run(tmp_path, monkeypatch):
    """Early stopping, keep-best checkpoint, dropout and augmentation all continue exactly."""
    from cnnlab.config import config_from_dict
    from cnnlab.models.registry import create_model
    from cnnlab.training.recipes.standard import fit
    from cnnlab.training.rundir import RunDir

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = config_from_dict({
        "seed": 3,
        "model": {"arch": "test_resnet", "head": {"pooling": "max", "units": 8, "dropout": 0.3}},
        "train": {"epochs": 4, "batch_size": 16, "precision": "fp32", "optimizer": {"name": "adam", "lr": 3e-3},
                  "augment": {"flip": True, "crop_padding": 2},
                  # "lr" is logged and constant: the first epoch is the best, so the weights to
                  # restore at the end were saved before the interruption and must survive it.
                  "early_stopping": {"monitor": "lr", "mode": "max", "patience": 10, "min_delta": 0.0,
                                     "restore_best_weights": True},
                  "checkpoint": {"monitor": "val_loss"}},
    })
    train, val = _arrays(12, 0), _arrays(4, 1)

    def model(seed):
        torch.manual_seed(seed)
        return create_model(cfg.model, train.class_names)

    quiet = {"progress": False, "log": lambda s: None}
    whole = fit(cfg, model(0), train, val, RunDir(tmp_path / "whole"), **quiet)

    def stop_after_second(epoch, logs):
        if epoch == 1:
            raise _Interrupt

    part = RunDir(tmp_path / "part")
    with pytest.raises(_Interrupt):
        fit(cfg, model(0), train, val, part, epoch_callback=stop_after_second, **quiet)
    # A fresh process would build the model from another random state: the weights must come
    # from the saved state, not from the seed.
    resumed = fit(cfg, model(99), train, val, part, resume=True, **quiet)

    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for got, want in zip(resumed.history, whole.history):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-7), (got["epoch"], key)
    assert resumed.best_epoch == whole.best_epoch
    # Final weights: epoch 1's, restored by early stopping in both runs.
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    # Keep-best checkpoints (val_loss) agree too, wherever the best epoch fell.
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "whole" / "best.safetensors")), load_file(str(part / "best.safetensors"))
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
