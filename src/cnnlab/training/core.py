"""The trainer core: one epoch loop that every recipe shares, with callbacks (Keras's shape).

A recipe (training/recipes/standard.py, training/recipes/fast.py) supplies only what is its own, as an
:class:`EpochRecipe`: the model and optimiser(s), how to train (and validate) one epoch, whether
another epoch follows, and its extra resumable tensors. :class:`Trainer` owns the rest:

- the epoch loop, the log line and the history (``history.csv`` after every epoch);
- the callbacks (training/callbacks.py), in order: a non-finite validation loss stop, the best
  checkpoint, the top-k checkpoints, early stopping (with restore_best_weights), the target
  accuracy, the time budget, the caller's ``epoch_callback`` (Optuna's pruning; StopTraining);
- the resumable state after every epoch (training/state.py: weights, optimisers, the recipe's
  tensors, every callback's state, the history), so a run killed even by SIGKILL goes on from its
  last finished epoch as if it had not stopped;
- the :class:`FitResult`.

Data parallelism: every rank runs the same loop and the same callbacks, but only rank 0 writes
files: every write goes through :meth:`Trainer.save_weights`, :meth:`Trainer.write_json`,
:meth:`Trainer.remove` and :meth:`Trainer.commit` (history and state), which all ask
:attr:`Trainer.writes` (one check, here). For the callbacks' decisions (early stopping, target,
budget) to agree across ranks, a recipe's ``train_epoch`` returns metrics reduced over the ranks
(utils/distributed.py ``all_reduce_sum``). Callbacks run once per epoch, never per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn

from cnnlab.models.io import save_weights
from cnnlab.training import distributed as ddp
from cnnlab.training.callbacks import (BestCheckpoint, Callback, Deadline, EarlyStopping, EpochFunction,
                                       NonFiniteValidationLoss, TargetAccuracy, TimeBudget, TopKCheckpoints,
                                       as_deadline)
from cnnlab.training.rundir import RunDir
from cnnlab.training.state import load_state, save_state
from cnnlab.utils.io import atomic_write_json

#: Called after each epoch with (epoch, logs). Raising StopTraining ends training after this epoch
#: (the run finishes normally); any other exception aborts the run (Optuna's pruning).
EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict[str, float]]
    run_dir: RunDir
    epochs_run: int
    best_epoch: int | None = None
    stopped_early: bool = False
    stop_reason: str = ""
    train_seconds: float = 0.0
    images_per_second: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    #: The run's 1-based epoch whose weights the model holds (an earlier one after restore_best_weights).
    weights_epoch: int | None = None


class EpochRecipe(Protocol):
    """What a recipe gives the trainer. ``epoch`` is 0-based within this training stage."""

    model: nn.Module  # what trains (its weights are saved in the resumable state)
    optimizers: Sequence[torch.optim.Optimizer]

    def more(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` is to be trained."""

    def planned_epochs(self) -> int:
        """The epochs the run is planned to have (for the log line; may change as it trains)."""

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (and validate); the logs: loss, accuracy, val_* ..., lr, seconds, images_per_second."""

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The recipe's own resumable state after an epoch: JSON data (with "step") and tensors."""

    def load_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None: ...


def config_callbacks(tc: Any, *, target_key: str = "val_accuracy", deadline: float | Deadline | None = None,
                     epoch_callback: EpochCallback | None = None,
                     clock: Callable[[], float] | None = None) -> list[Callback]:
    """The callbacks ``cfg.train`` asks for, in the core's order (``target_key``: the logged accuracy
    that ``train.target_accuracy`` watches; ``deadline``: a ``time.monotonic()`` bound, or a
    callbacks.Deadline with its clock and the seconds kept for the evaluation)."""
    cbs: list[Callback] = [NonFiniteValidationLoss(tc.optimizer.lr)]
    if tc.checkpoint:
        cbs.append(BestCheckpoint(tc.checkpoint.monitor, tc.checkpoint.mode))
        if tc.checkpoint.save_top_k:
            cbs.append(TopKCheckpoints(tc.checkpoint.monitor, tc.checkpoint.mode, tc.checkpoint.save_top_k))
    if tc.early_stopping:
        cbs.append(EarlyStopping(**vars(tc.early_stopping)))
    if tc.target_accuracy is not None and target_key:
        cbs.append(TargetAccuracy(tc.target_accuracy, target_key))
    bound = as_deadline(deadline)
    if bound is not None:
        cbs.append(TimeBudget(bound.end, clock or bound.clock, reserve=bound.reserve))
    if epoch_callback is not None:
        cbs.append(EpochFunction(epoch_callback))
    return cbs


def log_line(epoch: int, epochs: int, logs: dict[str, Any]) -> str:
    parts = [f"Epoch {epoch + 1}/{epochs}", f"{logs['seconds']:.0f}s"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy"):
        if key in logs and not math.isnan(logs[key]):
            parts.append(f"{key}: {logs[key]:.4f}")
    parts.append(f"lr: {logs['lr']:.2e}")
    parts.append(f"{logs['images_per_second']:.0f} img/s")
    if "gflops_per_second" in logs:
        parts.append(f"{logs['gflops_per_second']:.0f} GFLOP/s")
    return " - ".join(parts)


class Trainer:
    """Runs ``recipe``'s epochs with ``callbacks``, writing to ``run_dir`` (see the module doc).

    ``state_dir``: where the resumable state lives (default ``run_dir/state``; a later stage
    has its own). ``stage`` names a later training stage (a ``stage`` column in the history);
    ``prior_history`` holds the earlier stages' rows. ``weights_model``: whose weights the
    checkpoints hold (default the recipe's model; a head trained on cached features saves the
    whole classifier; an EMA saves the averaged weights). ``writes``: whether this process
    writes files (default: data-parallel rank 0 only).
    """

    def __init__(self, recipe: EpochRecipe, run_dir: RunDir, callbacks: Sequence[Callback], *,
                 state_dir: Path | None = None, log: Callable[[str], None] = print, stage: str = "",
                 prior_history: Sequence[dict[str, Any]] | None = None, weights_model: nn.Module | None = None,
                 writes: bool | None = None):
        from cnnlab.utils.distributed import current

        self.recipe, self.run_dir, self.callbacks = recipe, run_dir, list(callbacks)
        self.model = recipe.model
        self.weights_model = weights_model if weights_model is not None else recipe.model
        self.state_dir = state_dir if state_dir is not None else run_dir.state
        self.log, self.stage = log, stage
        self.prior = list(prior_history or [])
        self.history: list[dict[str, Any]] = []
        self.writes = current().is_main if writes is None else writes
        self.stopped, self.stop_reason = False, ""
        self._start: int | None = None
        names = [cb.name for cb in self.callbacks]
        if len(set(names)) != len(names):
            raise ValueError(f"two callbacks share a name (their saved state would collide): {names}")

    # -- what callbacks call
    def stop(self, reason: str) -> None:
        """End training after this epoch; the first reason given is the one recorded."""
        if not self.stopped:
            self.stopped, self.stop_reason = True, reason

    def has_next(self, epoch: int) -> bool:
        """Whether another epoch follows ``epoch`` (as the recipe plans it now)."""
        return self.recipe.more(epoch + 1)

    def train_seconds(self) -> float:
        return sum(h.get("seconds", 0.0) for h in self.history)

    def save_weights(self, path: Path) -> None:
        if self.writes:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            save_weights(self.weights_model, path)

    def write_json(self, path: Path, obj: Any) -> None:
        if self.writes:
            atomic_write_json(path, obj)

    def remove(self, path: Path) -> None:
        if self.writes:
            Path(path).unlink(missing_ok=True)

    def find(self, kind: type) -> Any:
        """The first callback of type ``kind`` (None: there is none)."""
        return next((cb for cb in self.callbacks if isinstance(cb, kind)), None)

    # -- the loop
    def resume(self) -> int:
        """Load the resumable state (before :meth:`fit`, for a recipe that needs it early); returns
        the first epoch still to train."""
        self._start = self._load() + 1
        self.log(f"resuming {self.run_dir.path} after epoch {self._start} of {self.recipe.planned_epochs()}")
        return self._start

    def fit(self, resume: bool = False) -> FitResult:
        """Train until the recipe has no more epochs or a callback stops it (``resume``: go on from
        the saved state, unless :meth:`resume` already loaded it)."""
        if resume and self._start is None:
            self.resume()
        epoch = self._start or 0
        for cb in self.callbacks:
            cb.set_trainer(self)
            cb.on_train_begin()
        last = epoch - 1
        while not self.stopped and self.recipe.more(epoch):
            logs: dict[str, Any] = {"epoch": len(self.prior) + epoch + 1}
            logs.update(self.recipe.train_epoch(epoch))
            if self.stage:
                logs["stage"] = self.stage
            self.history.append(logs)
            self.log(log_line(epoch, self.recipe.planned_epochs(), logs))
            for cb in self.callbacks:
                cb.on_epoch_end(epoch, logs)
            # DDP: rank 0's decision holds on every rank (its clock for the time budget, its callbacks)
            self.stopped, self.stop_reason = ddp.broadcast_object((self.stopped, self.stop_reason))
            self.commit(epoch)
            if self.stopped:
                self.log(self.stop_reason)
            last = epoch
            epoch += 1
        for cb in self.callbacks:
            cb.on_train_end()
        self.model.eval()
        self.weights_model.eval()
        return self._result(last)

    def commit(self, epoch: int) -> None:
        """The history and the resumable state after ``epoch`` (the state's JSON rename is the commit)."""
        if not self.writes:
            return
        self.run_dir.write_history(self.prior + self.history)
        meta, tensors = self.recipe.state()
        cb_tensors = {f"cb.{cb.name}.{k}": v for cb in self.callbacks for k, v in cb.state_tensors().items()}
        save_state(self.state_dir, self.model, list(self.recipe.optimizers), {
            **meta, "epoch": epoch, "history": self.prior + self.history,
            "stopped": self.stopped, "stop_reason": self.stop_reason,
            "callbacks": {cb.name: cb.state_dict() for cb in self.callbacks},
        }, extra_tensors={**{f"recipe.{k}": v for k, v in tensors.items()}, **cb_tensors})

    def _load(self) -> int:
        # DDP: rank 0 reads the state and sends it (the other ranks need no copy of the run directory)
        meta, extra = ddp.load_state_from_main(self.state_dir, self.model, list(self.recipe.optimizers), load_state)
        self.history = list(meta["history"])[len(self.prior):]
        self.stopped, self.stop_reason = bool(meta["stopped"]), meta.get("stop_reason", "")
        saved = meta.get("callbacks") or {}
        for cb in self.callbacks:
            if saved.get(cb.name) is not None:
                cb.load_state_dict(saved[cb.name])
            prefix = f"cb.{cb.name}."
            own = {k[len(prefix):]: v for k, v in extra.items() if k.startswith(prefix)}
            if own:
                cb.load_state_tensors(own)
        self.recipe.load_state(meta, {k[7:]: v for k, v in extra.items() if k.startswith("recipe.")})
        return int(meta["epoch"])

    def _result(self, last: int) -> FitResult:
        ckpt, es = self.find(BestCheckpoint), self.find(EarlyStopping)
        best = (ckpt.best_epoch + 1) if ckpt else ((es.best_epoch + 1) if es and es.best_epoch >= 0 else None)
        held = es.best_epoch if es is not None and es.restored else last
        rates = sorted(h["images_per_second"] for h in self.history)
        return FitResult(
            model=self.model, history=self.history, run_dir=self.run_dir, epochs_run=len(self.history),
            best_epoch=best, stopped_early=self.stopped, stop_reason=self.stop_reason,
            train_seconds=self.train_seconds(),
            images_per_second=rates[len(rates) // 2] if rates else 0.0,  # median epoch
            weights_epoch=len(self.prior) + held + 1 if self.history else None)
