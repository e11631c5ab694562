"""The trainer core (training/core.py): the callback contract, stopping, top-k checkpoints, the time
budget and resuming. Most tests drive the core with a scripted toy recipe (a 2x2 linear model whose
weights are set to the epoch number, and scripted metrics), so every number is known in advance;
the last ones run real tiny trainings through ``cnnlab.train``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from cnnlab.training.callbacks import Callback, EarlyStopping, StopTraining, TimeBudget
from cnnlab.training.core import Trainer, config_callbacks
from cnnlab.training.rundir import RunDir

VALUES = [0.1, 0.5, 0.3, 0.7, 0.2, 0.6]  # scripted val_accuracy of epochs 1..6


class Interrupt(BaseException):
    """Stands in for a kill: not an Exception, so nothing on the way catches it."""


class Toy:
    """A scripted recipe: epoch e (0-based) sets the weights to e + 1 and logs VALUES[e]."""

    def __init__(self, epochs: int = len(VALUES), values=VALUES, clock=None, interrupt_at: int | None = None):
        self.model = nn.Linear(2, 2)
        self.optimizers = [torch.optim.SGD(self.model.parameters(), lr=0.1)]
        self.epochs, self.values, self.clock, self.interrupt_at = epochs, values, clock, interrupt_at
        self.trained: list[int] = []
        self.step = 0

    def more(self, epoch):
        return epoch < self.epochs

    def planned_epochs(self):
        return self.epochs

    def train_epoch(self, epoch):
        if epoch == self.interrupt_at:
            raise Interrupt
        self.trained.append(epoch)
        with torch.no_grad():
            for p in self.model.parameters():
                p.fill_(epoch + 1)
        self.step += 3
        if self.clock is not None:
            self.clock.t += 10.0
        return {"loss": 1.0 - self.values[epoch], "accuracy": self.values[epoch], "val_loss": 1.0 - self.values[epoch],
                "val_accuracy": self.values[epoch], "lr": 0.1, "seconds": 1.0, "images_per_second": 100.0}

    def state(self):
        return {"step": self.step}, {"marker": torch.tensor([float(self.step)])}

    def load_state(self, meta, tensors):
        assert float(tensors["marker"][0]) == meta["step"]
        self.step = meta["step"]


class Recorder(Callback):
    def __init__(self, tag, events, rd=None):
        self.tag, self.events, self.rd, self.seen = tag, events, rd, 0

    @property
    def name(self):
        return f"Recorder-{self.tag}"

    def on_train_begin(self):
        self.events.append((self.tag, "begin"))

    def on_epoch_end(self, epoch, logs):
        self.seen += 1
        on_disk = None
        if self.rd is not None and (self.rd.state / "train_state.json").is_file():
            on_disk = json.loads((self.rd.state / "train_state.json").read_text())["epoch"]
        self.events.append((self.tag, epoch, logs["epoch"], on_disk))

    def on_train_end(self):
        self.events.append((self.tag, "end"))

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


class Stopper(Callback):
    def __init__(self, at, reason):
        self.at, self.reason = at, reason

    @property
    def name(self):
        return f"Stopper-{self.reason}"

    def on_epoch_end(self, epoch, logs):
        if epoch == self.at:
            self.trainer.stop(self.reason)


def _rd(tmp_path: Path, name="r") -> RunDir:
    rd = RunDir(tmp_path / name)
    rd.path.mkdir(parents=True)
    return rd


def test_callbacks_run_in_order_once_per_epoch_and_see_the_previous_epochs_state(tmp_path):
    rd, events = _rd(tmp_path), []
    result = Trainer(Toy(epochs=3), rd, [Recorder("a", events, rd), Recorder("b", events)], log=lambda s: None).fit()
    assert events == [("a", "begin"), ("b", "begin"),
                      ("a", 0, 1, None), ("b", 0, 1, None),
                      ("a", 1, 2, 0), ("b", 1, 2, None),  # the state on disk is the previous epoch's
                      ("a", 2, 3, 1), ("b", 2, 3, None),
                      ("a", "end"), ("b", "end")]
    assert [h["epoch"] for h in result.history] == [1, 2, 3] and result.epochs_run == 3
    assert [h["val_accuracy"] for h in rd.read_history()] == VALUES[:3]
    state = json.loads((rd.state / "train_state.json").read_text())
    assert state["epoch"] == 2 and state["step"] == 9 and state["callbacks"]["Recorder-a"] == {"seen": 3}


def test_the_first_stop_reason_wins_and_later_callbacks_still_see_the_epoch(tmp_path):
    events = []
    result = Trainer(Toy(), _rd(tmp_path), [Stopper(1, "first"), Stopper(1, "second"), Recorder("r", events)],
                     log=lambda s: None).fit()
    assert result.stopped_early and result.stop_reason == "first"
    assert result.epochs_run == 2 and ("r", 1, 2, None) in events


def test_resume_restores_the_recipe_and_every_callbacks_state(tmp_path):
    rd = _rd(tmp_path)
    with pytest.raises(Interrupt):
        Trainer(Toy(interrupt_at=3), rd, [Recorder("a", [])], log=lambda s: None).fit()
    toy, rec, lines = Toy(), Recorder("a", []), []
    result = Trainer(toy, rd, [rec], log=lines.append).fit(resume=True)
    assert toy.trained == [3, 4, 5] and toy.step == 18  # 9 steps restored, then 3 more epochs of 3
    assert rec.seen == 6 and "resuming" in lines[0] and "after epoch 3 of 6" in lines[0]
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4, 5, 6]
    assert float(result.model.weight.detach()[0, 0]) == 6.0


def test_a_rank_that_does_not_write_leaves_no_file(tmp_path):
    rd = _rd(tmp_path)
    tc = _train_cfg(save_top_k=2)
    result = Trainer(Toy(), rd, config_callbacks(tc), log=lambda s: None, writes=False).fit()
    assert result.epochs_run == 6 and result.best_epoch == 4  # the decisions are still made
    assert list(rd.path.iterdir()) == []


def _train_cfg(save_top_k=0, **train):
    from cnnlab.config import config_from_dict

    return config_from_dict({"train": {"checkpoint": {"monitor": "val_accuracy", "save_top_k": save_top_k},
                                       **train}}).train


def _top_k_on_disk(rd: RunDir):
    folder = rd.path / "checkpoints"
    index = json.loads((folder / "index.json").read_text())
    files = sorted(p.name for p in folder.glob("epoch-*.safetensors"))
    return index, files


def _check_top_k(rd: RunDir, k: int, toy: bool = True):
    """The k files and the index are the k best rows of history.csv, best first, holding those epochs' weights."""
    rows = rd.read_history()
    best = sorted(rows, key=lambda h: -h["val_accuracy"])[:k]
    index, files = _top_k_on_disk(rd)
    assert [e["epoch"] for e in index] == [h["epoch"] for h in best]
    assert [e["value"] for e in index] == [h["val_accuracy"] for h in best]
    assert all(e["monitor"] == "val_accuracy" for e in index)
    assert files == sorted(f"epoch-{h['epoch']:03d}.safetensors" for h in best)
    for e in index:
        weights = load_file(str(rd.path / e["path"]))
        if toy:
            assert torch.all(weights["weight"] == e["epoch"])  # the weights of that epoch
        else:  # a whole model's weights, as the final model has them
            assert weights.keys() == load_file(str(rd.path / "model.safetensors")).keys()
    return index


def test_top_k_checkpoints_keep_exactly_the_k_best_epochs(tmp_path):
    rd = _rd(tmp_path)
    Trainer(Toy(), rd, config_callbacks(_train_cfg(save_top_k=2)), log=lambda s: None).fit()
    index = _check_top_k(rd, 2)
    assert [e["epoch"] for e in index] == [4, 6]  # 0.7 and 0.6
    assert index[0]["path"] == "checkpoints/epoch-004.safetensors"
    assert torch.all(load_file(str(rd.path / "best.safetensors"))["weight"] == 4)


def test_top_k_checkpoints_survive_a_kill_between_saving_a_file_and_the_state(tmp_path):
    class KillAfterCheckpoints(Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 3:  # TopK has just saved epoch 4 and dropped epoch 3; the state is not saved
                raise Interrupt

    rd = _rd(tmp_path)
    with pytest.raises(Interrupt):
        Trainer(Toy(), rd, [*config_callbacks(_train_cfg(save_top_k=2)), KillAfterCheckpoints()],
                log=lambda s: None).fit()
    _, files = _top_k_on_disk(rd)
    assert files == ["epoch-002.safetensors", "epoch-003.safetensors", "epoch-004.safetensors"]
    Trainer(Toy(), rd, config_callbacks(_train_cfg(save_top_k=2)), log=lambda s: None).fit(resume=True)
    assert [e["epoch"] for e in _check_top_k(rd, 2)] == [4, 6]


def test_top_k_keeps_all_epochs_when_there_are_fewer_than_k(tmp_path):
    rd = _rd(tmp_path)
    Trainer(Toy(epochs=3), rd, config_callbacks(_train_cfg(save_top_k=5)), log=lambda s: None).fit()
    assert [e["epoch"] for e in _check_top_k(rd, 5)] == [2, 3, 1]


class FakeClock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def test_time_budget_stops_when_the_next_epoch_would_end_after_the_deadline(tmp_path):
    clock = FakeClock()
    budget = TimeBudget(deadline=clock.t + 35.0, clock=clock)  # epochs take 10 s: 3 end by t+30, a 4th at t+40
    result = Trainer(Toy(clock=clock), _rd(tmp_path), [budget], log=lambda s: None).fit()
    assert result.epochs_run == 3 and result.stopped_early
    assert result.stop_reason.startswith("time budget: the next epoch (about 10.0 s)") and "5.0 s left" in result.stop_reason


def test_time_budget_far_away_lets_the_run_finish(tmp_path):
    clock = FakeClock()
    result = Trainer(Toy(clock=clock), _rd(tmp_path), [TimeBudget(clock.t + 60.0, clock)], log=lambda s: None).fit()
    assert result.epochs_run == 6 and not result.stopped_early


def test_time_budget_keeps_its_reserve_for_the_evaluation(tmp_path):
    """Epochs of 10 s, the deadline 60 s away with 25 s kept for the evaluation: training must end
    by t+35, so 3 epochs (a 4th would end at t+40), not the 6 that fit in 60 s."""
    clock = FakeClock()
    budget = TimeBudget(clock.t + 60.0, clock, reserve=25.0)
    result = Trainer(Toy(clock=clock), _rd(tmp_path), [budget], log=lambda s: None).fit()
    assert result.epochs_run == 3 and result.stopped_early
    assert "30.0 s left, 25.0 s of them kept for the evaluation" in result.stop_reason
    clock = FakeClock()  # the same deadline without a reserve: all 6 epochs, the last ending at t+60
    result = Trainer(Toy(clock=clock), _rd(tmp_path / "b"), [TimeBudget(clock.t + 60.0, clock)], log=lambda s: None).fit()
    assert result.epochs_run == 6 and not result.stopped_early


def test_time_budget_estimates_the_next_epoch_from_the_last_not_the_mean(tmp_path):
    """A first epoch slowed by warm-up (40 s, then 10 s each), the deadline at t+85: at t+70 the mean
    (17.5 s) would stop the run (t+87.5); the last epoch (10 s) lets a 5th run, to t+80."""
    clock = FakeClock()

    class WarmUp(Toy):
        def train_epoch(self, epoch):
            if epoch == 0:
                clock.t += 30.0
            return super().train_epoch(epoch)

    result = Trainer(WarmUp(clock=clock), _rd(tmp_path), [TimeBudget(clock.t + 85.0, clock)], log=lambda s: None).fit()
    assert result.epochs_run == 5 and result.stopped_early  # a 6th would end at t+90


def test_config_callbacks_take_a_deadline_with_its_clock_and_reserve():
    from types import SimpleNamespace

    from cnnlab.training.callbacks import Deadline

    tc = SimpleNamespace(optimizer=SimpleNamespace(lr=0.1), checkpoint=None, early_stopping=None,
                         target_accuracy=None)
    clock = FakeClock()
    budget = [cb for cb in config_callbacks(tc, deadline=Deadline(100.0, 20.0, clock)) if isinstance(cb, TimeBudget)]
    assert len(budget) == 1 and (budget[0].deadline, budget[0].reserve, budget[0].clock) == (100.0, 20.0, clock)
    plain = [cb for cb in config_callbacks(tc, deadline=50.0) if isinstance(cb, TimeBudget)]
    assert (plain[0].deadline, plain[0].reserve) == (50.0, 0.0)


def test_restore_best_weights_puts_back_the_best_epoch(tmp_path):
    es = EarlyStopping(monitor="val_accuracy", patience=10, restore_best_weights=True)
    result = Trainer(Toy(), _rd(tmp_path), [es], log=lambda s: None).fit()
    assert es.restored and float(result.model.weight.detach()[0, 0]) == 4.0 and result.weights_epoch == 4


# ----------------------------------------------------------------------------- real tiny runs

pytest.importorskip("timm")


def _cfg(epochs=3, **train):
    return {"name": "core", "seed": 0, "data": {"validation_split": 0.25},
            "model": {"arch": "test_resnet", "head": {"pooling": "max"}},
            "train": {"epochs": epochs, "batch_size": 8, "precision": "fp32",
                      "optimizer": {"name": "adam", "lr": 1e-3}, **train}}


@pytest.mark.usefixtures("one_thread")
def test_stop_training_from_an_epoch_callback_ends_after_that_epoch_and_finishes_the_run(tiny_tree, tmp_path):
    from cnnlab import api

    def enough(epoch, logs):
        if epoch == 0:
            raise StopTraining("enough after one epoch")

    run = api.train(_cfg(), data=str(tiny_tree), run_dir=tmp_path / "r", progress=False, log=lambda s: None,
                    epoch_callback=enough)
    assert run.fit.epochs_run == 1 and [h["epoch"] for h in RunDir(tmp_path / "r").read_history()] == [1]
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["stopped_early"] is True and metrics["stop_reason"] == "enough after one epoch"
    assert (tmp_path / "r" / "model.safetensors").is_file() and not (tmp_path / "r" / "state").exists()
    assert 0.0 <= metrics["val"]["accuracy"] <= 1.0 and metrics["val"]["count"] == 18  # evaluated like any run


@pytest.mark.usefixtures("one_thread")
def test_deadline_bounds_a_standard_run_through_orchestrate(tiny_tree, tmp_path):
    import time

    from cnnlab.training import orchestrate

    # A deadline already behind us: however fast the machine, the second epoch cannot end before it.
    run = orchestrate.train(_cfg(checkpoint={"monitor": "val_accuracy", "save_top_k": 2}), data=str(tiny_tree),
                            run_dir=tmp_path / "r", progress=False, log=lambda s: None,
                            deadline=time.monotonic() - 1.0)
    assert run.fit.epochs_run == 1 and run.fit.stop_reason.startswith("time budget")
    assert (tmp_path / "r" / "model.safetensors").is_file()
    index = json.loads((tmp_path / "r" / "checkpoints" / "index.json").read_text())
    assert [e["epoch"] for e in index] == [1]


def _arrays(per_class=12, seed=0, size=16):
    import numpy as np

    from cnnlab.data.dataset import ImageArrays

    rng = np.random.default_rng(seed)
    colours = np.array([(30, 40, 210), (35, 200, 45), (215, 35, 30)], dtype=np.int16)
    y = np.repeat(np.arange(3), per_class)
    x = np.clip(colours[y][:, None, None, :] + rng.integers(-20, 21, (len(y), size, size, 3)), 0, 255).astype(np.uint8)
    order = rng.permutation(len(y))
    return ImageArrays(x[order], y[order], ["blue", "green", "red"])


def _fit_ema(tmp_path, name, ema):
    from cnnlab.config import config_from_dict
    from cnnlab.models.registry import create_model
    from cnnlab.training.recipes.standard import fit

    cfg = config_from_dict(_cfg(epochs=2, ema=ema, checkpoint={"monitor": "epoch", "mode": "max"}))
    train, val = _arrays(), _arrays(per_class=4, seed=1)
    torch.manual_seed(0)
    model = create_model(cfg.model, train.class_names)
    result = fit(cfg, model, train, val, _rd(tmp_path, name), progress=False, log=lambda s: None)
    weights = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
    return result, weights, load_file(str(tmp_path / name / "best.safetensors"))


@pytest.mark.usefixtures("one_thread")
def test_ema_weights_differ_from_the_raw_ones_and_are_what_is_validated_and_saved(tmp_path):
    raw, raw_w, _ = _fit_ema(tmp_path, "raw", None)
    avg, avg_w, avg_best = _fit_ema(tmp_path, "ema", 0.9)
    near, near_w, _ = _fit_ema(tmp_path, "near", 1e-6)  # a decay near 0: the average is the last weights
    # The average does not change the training itself: the same training losses, step for step ...
    assert [h["loss"] for h in avg.history] == pytest.approx([h["loss"] for h in raw.history], rel=1e-6)
    # ... but validation scores the averaged weights, and the model holds them (and so does the checkpoint).
    assert avg.history[-1]["val_loss"] != pytest.approx(raw.history[-1]["val_loss"], rel=1e-4)
    key = next(k for k, v in raw_w.items() if v.is_floating_point() and v.numel() > 100)
    assert (avg_w[key] - raw_w[key]).abs().max() > 1e-4
    for k, v in avg_best.items():
        torch.testing.assert_close(v, avg_w[k], msg=k)
    for k, v in raw_w.items():
        if v.is_floating_point():
            torch.testing.assert_close(near_w[k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert near.history[-1]["val_loss"] == pytest.approx(raw.history[-1]["val_loss"], rel=1e-4)


def _fast_cfg(**train):
    return {"name": "fast-core", "seed": 0, "data": {"validation_split": 0.25},
            "model": {"arch": "cifar_fastnet", "preprocessing": "keras_tf", "head": {"pooling": "max"},
                      "kwargs": {"widths": [16, 32, 32]}},
            "train": {"recipe": "fast", "epochs": 4, "batch_size": 16, "precision": "fp32",
                      "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.85, "nesterov": True},
                      "label_smoothing": 0.2, "recipe_options": {"workers": 1}, **train}}


@pytest.mark.usefixtures("one_thread")
def test_the_fast_recipe_keeps_top_k_checkpoints_and_honours_a_deadline(tiny_tree, tmp_path):
    import time

    from cnnlab.training import orchestrate

    orchestrate.train(_fast_cfg(checkpoint={"monitor": "val_accuracy", "save_top_k": 2}), data=str(tiny_tree),
                      run_dir=tmp_path / "topk", progress=False, log=lambda s: None)
    _check_top_k(RunDir(tmp_path / "topk"), 2, toy=False)
    logs: list[str] = []
    run = orchestrate.train(_fast_cfg(), data=str(tiny_tree), run_dir=tmp_path / "late", progress=False,
                            log=logs.append, deadline=time.monotonic() - 1.0)
    assert run.fit.epochs_run == 1 and any(line.startswith("time budget:") for line in logs)

