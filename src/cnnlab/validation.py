"""Value checks for a config, applied once it is built (config.py calls :func:`check_config`).

The types are config.py's business; this module checks ranges: a learning rate must be a finite
number above zero, a batch size at least 1, a dropout rate in [0, 1) ... Each message names the
key, the allowed range and the value given, scikit-learn style, and the CLI flag where there is one:

    train.epochs must be an integer >= 1; got 0 (CLI: --epochs)

The same rules are exported for values that do not live in a config (``predict --top-k``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from cnnlab.errors import ConfigError

#: Config keys with a flag of their own on ``cnnlab train`` (named in the messages).
CLI_FLAGS = {
    "train.epochs": "--epochs",
    "train.batch_size": "--batch-size",
    "data.image_size": "--image-size",
    "data.max_train_samples": "--max-train-samples",
    "seed": "--seed",
    "train.target_accuracy": "--target-accuracy",
}

#: A rule: (what the value must be, in words; the test it must pass).
Rule = tuple[str, Callable[[Any], bool]]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def at_least(lo: int) -> Rule:
    return f"an integer >= {lo}", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def positive() -> Rule:
    return "a finite number > 0", lambda v: _finite(v) and v > 0


def non_negative() -> Rule:
    return "a finite number >= 0", lambda v: _finite(v) and v >= 0


def interval(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Rule:
    text = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def ok(v: Any) -> bool:
        if not _finite(v):
            return False
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    return f"a number in {text}", ok


def optional(rule: Rule) -> Rule:
    what, test = rule
    return f"{what} or null", lambda v: v is None or test(v)


UNIT = interval(0, 1, hi_open=True)  # [0, 1): dropout, label smoothing, momentum


def _schedule_rules(prefix: str) -> list[tuple[str, Rule]]:
    return [
        (f"{prefix}.decay_steps", optional(at_least(1))),
        (f"{prefix}.decay_rate", positive()),
        (f"{prefix}.decay_steps_fraction", optional(interval(0, 1, lo_open=True))),
        (f"{prefix}.warmup_epochs", non_negative()),
        (f"{prefix}.min_lr", non_negative()),
    ]


RULES: list[tuple[str, Rule]] = [
    ("seed", at_least(0)),
    ("data.image_size", optional(at_least(8))),
    ("data.validation_split", interval(0, 1, hi_open=True)),  # 0: no validation split
    ("data.max_train_samples", optional(at_least(1))),
    ("model.input_size", optional(at_least(8))),
    ("model.head.units", at_least(0)),
    ("model.head.l2", non_negative()),
    ("model.head.dropout", UNIT),
    ("model.drop_rate", UNIT),
    ("model.feature_stages", at_least(0)),
    ("model.unfreeze_last", optional(at_least(0))),
    ("train.epochs", at_least(1)),
    ("train.batch_size", at_least(1)),
    ("train.eval_batch_size", at_least(1)),
    ("train.label_smoothing", UNIT),
    ("train.target_accuracy", optional(interval(0, 1))),
    ("train.ema", optional(interval(0, 1, lo_open=True, hi_open=True))),
    ("train.optimizer.lr", positive()),
    ("train.optimizer.momentum", UNIT),
    ("train.optimizer.betas[0]", UNIT),
    ("train.optimizer.betas[1]", UNIT),
    ("train.optimizer.eps", positive()),
    ("train.optimizer.weight_decay", non_negative()),
    ("train.optimizer.base_lr", optional(positive())),
    ("train.optimizer.layer_decay", optional(positive())),
    *_schedule_rules("train.schedule"),
    ("train.augment.crop_padding", at_least(0)),
    ("train.augment.cutout", at_least(0)),
    ("train.checkpoint.save_top_k", at_least(0)),
    ("train.early_stopping.patience", at_least(0)),
    ("train.early_stopping.min_delta", non_negative()),
    ("train.early_stopping.start_from_epoch", at_least(0)),
    ("train.finetune.epochs", at_least(1)),
    ("train.finetune.lr", positive()),
    ("train.finetune.base_lr", optional(positive())),
    ("train.finetune.unfreeze_last", optional(at_least(0))),
    *_schedule_rules("train.finetune.schedule"),
]

_MISSING = object()


def _get(obj: Any, dotted: str) -> Any:
    """The value at ``dotted``, or _MISSING inside a section that is off (early_stopping: null)."""
    for part in dotted.split("."):
        if obj is None:
            return _MISSING
        index = None
        if part.endswith("]"):
            part, index = part[:-1].split("[")
        obj = getattr(obj, part, _MISSING)
        if obj is _MISSING:
            return obj
        if index is not None:
            obj = obj[int(index)]
    return obj


def check_value(key: str, value: Any, rule: Rule, flag: str | None = None) -> None:
    """Raise a ConfigError naming ``key``, the rule and ``value`` unless ``value`` passes ``rule``."""
    what, test = rule
    if not test(value):
        flag = flag or CLI_FLAGS.get(key)
        raise ConfigError(f"{key} must be {what}; got {value!r}" + (f" (CLI: {flag})" if flag else ""))


def check_config(cfg: Any) -> Any:
    """Check every ranged value of an :class:`~cnnlab.config.ExperimentConfig`; return it."""
    for key, rule in RULES:
        value = _get(cfg, key)
        if value is not _MISSING:
            check_value(key, value, rule)
    tc = getattr(cfg, "train", None)
    if tc is not None and getattr(tc, "class_weight", None) is not None:  # training/balance.py
        if tc.class_balance not in ("none", "weights"):
            raise ConfigError(f"train.class_weight is given, so train.class_balance must be 'weights' (or 'none'), "
                              f"not {tc.class_balance!r}")
        bad = {k: v for k, v in tc.class_weight.items()
               if isinstance(v, bool) or not isinstance(v, (int, float)) or not _finite(v) or v < 0}
        if bad:
            k, v = next(iter(bad.items()))
            raise ConfigError(f"train.class_weight[{k!r}] must be a weight >= 0; got {v!r}")
    return cfg
