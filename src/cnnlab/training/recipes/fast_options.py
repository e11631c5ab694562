"""The fast recipe's options (``train.recipe_options``) and the config keys it refuses."""

from __future__ import annotations

from typing import Any

from cnnlab.config import ExperimentConfig
from cnnlab.errors import ConfigError
from cnnlab.evaluation.predict import TTA_MODES

#: The recipe's own knobs; a config changes them with ``train.recipe_options: {name: value}``.
OPTIONS: dict[str, Any] = {
    "bias_lr_scale": 1.0,  # biases and BatchNorm shifts: this times the learning rate, 1/this the decay
    "whiten_bias_epochs": 3,  # the whitening bias trains during the first epochs only
    "whiten_samples": 5000,  # training images that define the whitening filters
    "whiten_eps": 5e-4,  # added to the patch-covariance eigenvalues
    "lookahead_every": 5,  # parameter averaging every k steps: the slow weights keep decay ** k ...
    "lookahead_decay": 0.95,  # ... times (progress) ** 3 of themselves (0: no averaging)
    "workers": 0,  # CPU worker threads, each on a slice of every batch (0: one per physical core)
    "monitor_tta": "none",  # test-time augmentation of the per-epoch accuracy (target_accuracy)
    "optimizer": "sgd",  # "muon": Muon (recipes/muon.py) for the conv filters, SGD for the rest
    "muon_lr": 0.1,  # Muon's peak learning rate (the schedule scales it like train.optimizer.lr)
    "muon_momentum": 0.6,
    "max_train_minutes": 0.0,  # > 0: the training budget; fewer epochs when they would not fit
    "time_limit_minutes": 0.0,  # > 0: the whole run's budget (data, training, final evaluation)
    "size": "fixed",  # "auto": width, epochs, batch and TTA sized to the budget (fast_plan.py)
    "heartbeat_seconds": 60.0,  # a progress line at least this often within an epoch (0: none)
}


def options(given: dict[str, Any]) -> dict[str, Any]:
    """The recipe options with ``given`` applied; unknown names are a ConfigError."""
    unknown = sorted(set(given) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"train.recipe_options: unknown option {unknown[0]!r} for the fast recipe; "
                          f"allowed: {', '.join(sorted(OPTIONS))}")
    out = dict(OPTIONS)
    for k, v in given.items():
        default = OPTIONS[k]
        if isinstance(default, str):
            allowed = {"monitor_tta": TTA_MODES, "optimizer": ("sgd", "muon"), "size": ("fixed", "auto")}[k]
            if v not in allowed:
                raise ConfigError(f"train.recipe_options.{k}: {v!r} is not one of {', '.join(allowed)}")
            out[k] = v
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"train.recipe_options.{k}: expected a number, got {v!r}")
        else:
            out[k] = type(default)(v)
            if out[k] < 0:
                raise ConfigError(f"train.recipe_options.{k}: must not be negative, got {v!r}")
    return out


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
