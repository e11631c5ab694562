"""Callbacks with Keras's meaning, on the one epoch loop of training/core.py.

A :class:`Callback` sees ``on_train_begin()``, ``on_epoch_end(epoch, logs)`` after every epoch
and ``on_train_end()``; it reaches the trainer through ``self.trainer`` (set by the core) to
stop training (``trainer.stop(reason)``) or to write files (``trainer.save_weights``,
``trainer.write_json``, ``trainer.remove``: only the data-parallel rank 0 writes, checked once
in the core). Its state is plain data (``state_dict``) plus optional tensors
(``state_tensors``), saved with the resumable state after every epoch, so a resumed run
continues it exactly.

The monitors (EarlyStopping, BestCheckpoint, TopKCheckpoints) watch a metric in the epoch's
logs (``val_loss``, ``val_accuracy``, ``loss`` ...); ``mode: auto`` maximises accuracies and F1.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnnlab.errors import ConfigError, TrainingError


class StopTraining(Exception):
    """Raised by an epoch callback to end training after this epoch (Keras's ``model.stop_training``).

    Unlike any other exception, which aborts the run, the run finishes normally: the weights
    are kept, the final model is saved and evaluated, and ``str(exc)`` becomes the stop reason.
    """


class Callback:
    """The base: every hook does nothing. ``name`` keys the callback's saved state."""

    trainer: Any = None

    @property
    def name(self) -> str:
        return type(self).__name__

    def set_trainer(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_train_begin(self) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> Any:
        pass

    def on_train_end(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        pass


def _mode(monitor: str, mode: str) -> str:
    if mode in ("min", "max"):
        return mode
    return "max" if ("acc" in monitor or monitor.endswith("f1")) else "min"


class _Monitor(Callback):
    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0):
        self.monitor = monitor
        self.mode = _mode(monitor, mode)
        self.min_delta = abs(min_delta)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = -1

    def value(self, logs: dict[str, float]) -> float:
        if self.monitor not in logs:
            raise ConfigError(
                f"monitor {self.monitor!r} is not a logged metric; available: {sorted(logs)}"
            )
        return float(logs[self.monitor])

    def improved(self, current: float) -> bool:
        if self.mode == "min":
            return current < self.best - self.min_delta
        return current > self.best + self.min_delta


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    Epochs before ``start_from_epoch`` (0-based, as in Keras) are not watched at all.
    With ``restore_best_weights`` the best epoch's weights (the trainer's ``weights_model``: the
    checkpointed ones) are kept, in the resumable state too, and put back at the end of training.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 1e-4,
                 start_from_epoch: int = 0, restore_best_weights: bool = False, mode: str = "auto"):
        super().__init__(monitor, mode, min_delta)
        self.patience = patience
        self.start_from_epoch = start_from_epoch
        self.restore_best_weights = restore_best_weights
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.restored = False

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> tuple[bool, bool]:
        """Returns (improved, stop); on a trainer, also keeps the best weights and stops it."""
        improved, stop = self._decide(epoch, logs)
        if self.trainer is not None:
            if improved and self.restore_best_weights:
                self.best_weights = {k: v.detach().cpu().clone()
                                     for k, v in self.trainer.weights_model.state_dict().items()}
            if stop:
                self.trainer.stop(f"early stopping: {self.monitor} did not improve for {self.patience} epochs "
                                  f"(best {self.best:.4f} at epoch {self.best_epoch + 1})")
        return improved, stop

    def _decide(self, epoch: int, logs: dict[str, float]) -> tuple[bool, bool]:
        if epoch < self.start_from_epoch:
            return False, False
        current = self.value(logs)
        self.wait += 1
        if self.improved(current):
            self.best, self.best_epoch, self.wait = current, epoch, 0
            return True, False
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            return False, True
        return False, False

    def on_train_end(self) -> None:
        if self.restore_best_weights and self.best_weights is not None and self.trainer is not None:
            self.trainer.weights_model.load_state_dict(self.best_weights)
            self.restored = True
            self.trainer.log(f"restored the weights of epoch {self.best_epoch + 1} (best {self.monitor})")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.wait, self.stopped_epoch = state["wait"], state["stopped_epoch"]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.best_weights or {})

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.best_weights = dict(tensors) or None


class BestCheckpoint(_Monitor):
    """Keras's ``ModelCheckpoint(save_best_only=True)``: ``best.safetensors`` in the run directory.

    ``on_epoch_end`` returns whether this epoch is the best so far (and, on a trainer, saves it).
    """

    FILE = "best.safetensors"

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> bool:
        current = self.value(logs)
        if self.improved(current):
            self.best, self.best_epoch = current, epoch
            if self.trainer is not None:
                self.trainer.save_weights(self.trainer.run_dir / self.FILE)
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]


class TopKCheckpoints(_Monitor):
    """The ``k`` best epochs' weights by ``monitor``: ``checkpoints/epoch-NNN.safetensors`` (NNN: the
    run's 1-based epoch number) and ``checkpoints/index.json`` = [{"epoch", "path" (relative to the
    run directory), "monitor", "value"}], best first (ties: the earlier epoch first).

    A checkpoint that drops out of the top k is deleted at the next epoch's end (or at the end of
    training), once the resumable state no longer lists it, so a run killed at any moment resumes
    with every file its state names. A later stage of the same run continues the index on disk.
    """

    FOLDER = "checkpoints"
    INDEX = "index.json"

    def __init__(self, monitor: str, mode: str, k: int):
        super().__init__(monitor, mode)
        self.k = k
        self.entries: list[dict[str, Any]] = []
        self._loaded = False

    def _folder(self) -> Path:
        return self.trainer.run_dir.path / self.FOLDER

    def on_train_begin(self) -> None:
        index = self._folder() / self.INDEX
        if not self._loaded and index.is_file():  # a later stage: the first stage's checkpoints count
            import json

            try:
                self.entries = [e for e in json.loads(index.read_text(encoding="utf-8"))
                                if e.get("monitor") == self.monitor]
            except (ValueError, AttributeError, TypeError):
                raise TrainingError(f"{index}: not a checkpoint index (a JSON list); remove it") from None

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    def _sweep(self) -> None:
        """Delete the checkpoint files that no entry names (at most one per epoch, or a killed epoch's)."""
        keep = {Path(e["path"]).name for e in self.entries}
        for f in self._folder().glob("epoch-*.safetensors"):
            if f.name not in keep:
                self.trainer.remove(f)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        self._sweep()  # the state saved after the previous epoch names only self.entries
        value = self.value(logs)
        if not math.isfinite(value):
            return
        number = int(logs.get("epoch", epoch + 1))
        if len(self.entries) >= self.k and not self._better(value, self.entries[-1]["value"]):
            return
        rel = f"{self.FOLDER}/epoch-{number:03d}.safetensors"
        self.trainer.save_weights(self._folder().parent / rel)
        self.entries = [e for e in self.entries if e["epoch"] != number]
        self.entries.append({"epoch": number, "path": rel, "monitor": self.monitor, "value": value})
        # best first; among equal values the earlier epoch first
        self.entries.sort(key=lambda e: (-e["value"] if self.mode == "max" else e["value"], e["epoch"]))
        self.entries = self.entries[: self.k]
        self.trainer.write_json(self._folder() / self.INDEX, self.entries)

    def on_train_end(self) -> None:
        self._sweep()

    def state_dict(self) -> dict[str, Any]:
        return {"entries": self.entries}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.entries = list(state["entries"])
        self._loaded = True


class TargetAccuracy(Callback):
    """Stop once ``logs[key]`` (``val_accuracy``; the fast recipe may watch ``test_accuracy``) reaches ``target``."""

    def __init__(self, target: float, key: str = "val_accuracy"):
        self.target, self.key = target, key

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if logs.get(self.key, -1.0) >= self.target:
            self.trainer.stop(f"reached target {self.key} {self.target} after {self.trainer.train_seconds():.1f} s "
                              f"of training (epoch {int(logs.get('epoch', epoch + 1))})")


class NonFiniteValidationLoss(Callback):
    """A TrainingError when the validation loss is NaN or inf (the training loss can stay finite meanwhile)."""

    def __init__(self, lr: float, key: str = "val_loss"):
        self.lr, self.key = lr, key

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.key in logs and not math.isfinite(logs[self.key]):
            raise TrainingError(f"the validation loss became {logs[self.key]} after epoch {epoch + 1}; "
                                f"training stopped (try a lower learning rate than {self.lr:g})")


@dataclass(frozen=True)
class Deadline:
    """When a training run must be done: ``end`` on ``clock``'s scale (default ``time.monotonic``),
    of which ``reserve`` seconds before it are kept for what follows the training (auto-fit's
    scoring of the trained model). What :class:`TimeBudget` enforces; ``orchestrate.train(deadline=)``
    takes one (or a bare ``time.monotonic()`` value: no reserve)."""

    end: float
    reserve: float = 0.0
    clock: Callable[[], float] = time.monotonic

    @property
    def training_end(self) -> float:
        return self.end - self.reserve

    def training_end_monotonic(self) -> float:
        """:attr:`training_end` as a ``time.monotonic()`` value (the fast recipe's re-planning keeps
        that clock), read once from this deadline's own clock."""
        if self.clock is time.monotonic:
            return self.training_end
        return time.monotonic() + (self.training_end - self.clock())


def as_deadline(value: float | Deadline | None) -> Deadline | None:
    """A :class:`Deadline` from a bare ``time.monotonic()`` value (no reserve); None stays None."""
    return value if value is None or isinstance(value, Deadline) else Deadline(float(value))


class TimeBudget(Callback):
    """The one stop rule of a time budget: after an epoch, stop when the next one would not end by
    ``deadline - reserve`` (``reserve``: seconds kept for what follows the training, e.g. the
    evaluation). ``deadline`` is a ``clock()`` value (default ``time.monotonic``).

    The next epoch is estimated as long as the last one, measured with the same clock between
    epoch ends (so validation and callbacks count), rather than as the mean of the epochs so far:
    the first epoch carries warm-up (torch.compile, first allocations, caches) that the mean would
    spread over every later estimate, stopping runs with time left, and the last epoch is the
    machine's speed now (another job on shared cores shows at once). No extra margin: an epoch a
    little longer than the last overruns into the reserve (auto-fit's evaluation estimate, tuning's
    finishing share), and epochs that fit exactly are not given up. The first epoch counts from
    ``on_train_begin``.
    """

    def __init__(self, deadline: float, clock: Callable[[], float] = time.monotonic, reserve: float = 0.0):
        self.deadline, self.clock, self.reserve = deadline, clock, reserve
        self.started: float | None = None
        self.last: float | None = None  # the clock at the end of the last epoch (or at the start)
        self.epochs = 0

    def start(self, now: float | None = None) -> None:
        """Count the first epoch from ``now`` (default: the clock now)."""
        self.started = self.last = self.clock() if now is None else now
        self.epochs = 0

    def on_train_begin(self) -> None:
        self.start()

    def should_stop(self) -> str | None:
        """Count one finished epoch; the stop reason when the next one would not fit (None: go on)."""
        now = self.clock()
        if self.last is None:
            self.start(now)
            return None
        self.epochs += 1
        epoch_seconds, self.last = now - self.last, now
        if now + epoch_seconds > self.deadline - self.reserve:
            kept = f", {self.reserve:.1f} s of them kept for the evaluation" if self.reserve else ""
            return (f"time budget: the next epoch (about {epoch_seconds:.1f} s) would end after the deadline "
                    f"({max(0.0, self.deadline - now):.1f} s left{kept})")
        return None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        reason = self.should_stop()
        if reason and self.trainer.has_next(epoch):  # after the last epoch there is nothing to stop
            self.trainer.stop(reason)


class EpochFunction(Callback):
    """The caller's ``epoch_callback(epoch, logs)`` (Optuna's pruning ...): raising StopTraining ends
    training after this epoch with ``str(exc)`` as the reason; any other exception aborts the run."""

    def __init__(self, fn: Callable[[int, dict[str, float]], None]):
        self.fn = fn

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        try:
            self.fn(epoch, logs)
        except StopTraining as exc:
            self.trainer.stop(str(exc) or "stopped by a callback")
        except Exception:
            self.trainer.commit(epoch)  # the epoch itself finished: keep its state, the run can resume
            raise
