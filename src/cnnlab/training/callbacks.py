"""Callbacks with Keras's meaning: EarlyStopping and keep-best checkpointing.

Both watch a metric in the epoch's logs (``val_loss``, ``val_accuracy``, ``loss`` ...).
Their state is plain data (``state_dict``), so a resumed run continues them exactly.
"""

from __future__ import annotations

import math
from typing import Any

from cnnlab.errors import ConfigError


class StopTraining(Exception):
    """Raised by an epoch callback to end training after this epoch (Keras's ``model.stop_training``).

    Unlike any other exception, which aborts the run, the run finishes normally: the weights
    are kept, the final model is saved and evaluated, and ``str(exc)`` becomes the stop reason.
    """


def _mode(monitor: str, mode: str) -> str:
    if mode in ("min", "max"):
        return mode
    return "max" if ("acc" in monitor or monitor.endswith("f1")) else "min"


class _Monitor:
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
    With ``restore_best_weights`` the trainer restores the best epoch's weights at the end.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 1e-4,
                 start_from_epoch: int = 0, restore_best_weights: bool = False, mode: str = "auto"):
        super().__init__(monitor, mode, min_delta)
        self.patience = patience
        self.start_from_epoch = start_from_epoch
        self.restore_best_weights = restore_best_weights
        self.wait = 0
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> tuple[bool, bool]:
        """Returns (improved, stop)."""
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

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.wait, self.stopped_epoch = state["wait"], state["stopped_epoch"]


class BestCheckpoint(_Monitor):
    """Keras's ``ModelCheckpoint(save_best_only=True)``: tells the trainer when to save."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> bool:
        current = self.value(logs)
        if self.improved(current):
            self.best, self.best_epoch = current, epoch
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
