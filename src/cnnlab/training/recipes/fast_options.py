"""The fast recipe's options (``train.recipe_options``) and the config keys it refuses."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from cnnlab.config import ExperimentConfig, from_dict
from cnnlab.errors import ConfigError
from cnnlab.validation import Rule, at_least, check_value, interval, non_negative, positive

PREFIX = "train.recipe_options"

@dataclass
class FastOptions:
    """The recipe's own knobs, typed; a config changes them with ``train.recipe_options: {name: value}``."""

    bias_lr_scale: float = 1.0  # biases and BatchNorm shifts: this times the learning rate, 1/this the decay
    whiten_bias_epochs: int = 3  # the whitening bias trains during the first epochs only
    whiten_samples: int = 5000  # training images that define the whitening filters
    whiten_eps: float = 5e-4  # added to the patch-covariance eigenvalues
    lookahead_every: int = 5  # parameter averaging every k steps: the slow weights keep decay ** k ...
    lookahead_decay: float = 0.95  # ... times (progress) ** 3 of themselves (0: no averaging)
    workers: int = 0  # CPU worker threads, each on a slice of every batch (0: one per physical core)
    # test-time augmentation of the per-epoch accuracy (target_accuracy); evaluation/predict.py's TTA_MODES
    monitor_tta: Literal["none", "flip", "flip_translate"] = "none"
    optimizer: Literal["sgd", "muon"] = "sgd"  # "muon": Muon (recipes/muon.py) for the conv filters, SGD for the rest
    muon_lr: float = 0.1  # Muon's peak learning rate (the schedule scales it like train.optimizer.lr)
    muon_momentum: float = 0.6
    max_train_minutes: float = 0.0  # > 0: the training budget; fewer epochs when they would not fit
    time_limit_minutes: float = 0.0  # > 0: the whole run's budget (data, training, final evaluation)
    size: Literal["fixed", "auto"] = "fixed"  # "auto": width, epochs, batch and TTA sized to the budget (fast_plan.py)
    # with size auto: plan only this width (the auto-fit planner's pick from the same measured
    # ladder, so the net it predicted is the net that trains); None: the widest that fits
    widths: list[int] | None = None
    heartbeat_seconds: float = 60.0  # a progress line at least this often within an epoch (0: none)


#: The defaults by name.
OPTIONS: dict[str, Any] = dataclasses.asdict(FastOptions())

#: Value ranges (validation.py's rules), checked after the types.
RULES: dict[str, Rule] = {
    "bias_lr_scale": positive(), "whiten_bias_epochs": at_least(0), "whiten_samples": at_least(1),
    "whiten_eps": positive(), "lookahead_every": at_least(1), "lookahead_decay": interval(0, 1, hi_open=True),
    "workers": at_least(0), "muon_lr": positive(), "muon_momentum": interval(0, 1, hi_open=True),
    "max_train_minutes": non_negative(), "time_limit_minutes": non_negative(), "heartbeat_seconds": non_negative(),
}


def options(given: dict[str, Any]) -> dict[str, Any]:
    """The recipe options with ``given`` applied, checked by config.py's one builder (unknown names,
    types) and validation.py's ranges; a ConfigError names the key and the value."""
    opts = dataclasses.asdict(from_dict(FastOptions, dict(given), prefix=PREFIX))
    for name, rule in RULES.items():
        check_value(f"{PREFIX}.{name}", opts[name], rule)
    return opts


#: Config keys the fast recipe does not use, with the value that means "not used": any other
#: value is refused (rather than silently ignored), naming the key and the recipe.
IGNORED_KEYS: dict[str, Any] = {
    "train.finetune": None, "train.augment.cutout": 0, "train.cache_features": "auto",
    "train.compile_features": "auto", "train.optimizer.base_lr": None, "train.optimizer.layer_decay": None,
    "model.freeze_base": False, "model.unfreeze_last": None, "model.feature_stages": 0,
    "model.input_size": None, "model.pretrained": None,
    "train.ema": None,  # its lookahead is its weight averaging
}


def check_config(cfg: ExperimentConfig) -> None:
    """Refuse settings the fast recipe would ignore, and an optimiser other than its own."""
    if cfg.train.optimizer.name != "sgd":
        raise ConfigError(f"the fast recipe trains with Nesterov SGD: set train.optimizer.name to 'sgd' "
                          f"(got {cfg.train.optimizer.name!r})")
    for key, unused in IGNORED_KEYS.items():
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if value != unused:
            raise ConfigError(f"{key}: {value!r} is not used by the fast recipe (train.recipe: fast); "
                              f"remove it or use train.recipe: standard")
    options(cfg.train.recipe_options)
