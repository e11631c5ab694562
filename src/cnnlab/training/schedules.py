"""Learning-rate schedules as pure functions of the optimiser step (resuming needs no state)."""

from __future__ import annotations

import math

from cnnlab.config import ScheduleConfig
from cnnlab.errors import ConfigError


def resolve_decay_steps(cfg: ScheduleConfig, total_steps: int) -> int | None:
    if cfg.decay_steps_fraction is not None:
        return max(1, int(round(cfg.decay_steps_fraction * total_steps)))
    return cfg.decay_steps


def lr_factor(cfg: ScheduleConfig, step: int, total_steps: int, steps_per_epoch: int, base_lr: float) -> float:
    """Multiplier on the base learning rate at optimiser step ``step`` (0-based)."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if warmup and step < warmup:
        return (step + 1) / warmup
    min_ratio = cfg.min_lr / base_lr if base_lr else 0.0
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "exponential":
        # Keras's ExponentialDecay: lr * rate ** (step / decay_steps), floored when staircase.
        decay_steps = resolve_decay_steps(cfg, total_steps)
        if not decay_steps:
            raise ConfigError("train.schedule.decay_steps (or decay_steps_fraction) is required for 'exponential'")
        p = step / decay_steps
        return cfg.decay_rate ** (math.floor(p) if cfg.staircase else p)
    span = max(1, total_steps - warmup)
    t = min(1.0, (step - warmup) / span)
    if cfg.name == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.name == "linear":
        return min_ratio + (1 - min_ratio) * (1 - t)
    raise ConfigError(f"unknown schedule {cfg.name!r}")
