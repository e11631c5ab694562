"""The auto-fit presets, named as AutoGluon's for familiarity, and what each one may spend time on.

=================  ==========================================================================
preset             what it chooses
=================  ==========================================================================
medium_quality     one model: the candidate with the best predicted validation accuracy among
                   the from-scratch fast net, frozen ImageNet features + a trained head, and
                   the whole pretrained base fine-tuned at 96 px (a few hundred photos get
                   fine-tuning when it fits); no ensemble, no soup. The quickest to predict.
high_quality       adds fine-tuning the last stages beside the main model (in at most 35% of
                   the time), up to :data:`MAX_SEEDS` runs of the fast net from different seeds
                   when their ensemble is predicted to beat one longer run (planner.py), a greedy
                   soup of the top-3 checkpoints of the fine-tuned candidates, a
                   validation-weighted ensemble, and time left by a candidate that stopped early
                   goes to another seed of the best one (at least 85% of the budget is used
                   unless every model stopped early on its own; the report says which).
best_quality       up to three models from all four candidates (extras in at most 45% of the
                   time), seeds, soup, ensemble and the leftover time as high_quality; flip
                   test-time augmentation and EMA weights (decay chosen from the planned steps:
                   candidates.ema_decay) for the fine-tuned candidates.
=================  ==========================================================================

**The default** (no preset given), like AutoGluon's documented default: ``medium_quality`` for a
time limit under :data:`HIGH_QUALITY_FROM_S` (20 minutes), ``high_quality`` from there on: a
30-minute fit then spends its extra time on several fast nets ensembled and on the models
beside them, not on one wider net (issue 24: 3x the budget bought 0.44 points that way).
"""

from __future__ import annotations

from dataclasses import dataclass

from cnnlab.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    kinds: tuple[str, ...]  # candidate kinds considered (candidates.KINDS)
    max_models: int  # models trained at most
    extra_share: float  # the models beside the main one may take at most this share of the time
    ensemble: bool  # a validation-weighted ensemble when it helps
    soup_top_k: int  # greedy soup of the top-k checkpoints (0: off)
    tta: str  # test-time augmentation of the fine-tuned candidates
    description: str
    ema: bool = False  # an exponential moving average of the fine-tuned candidates' weights (train.ema)
    seeds: int = 1  # runs of the fast net from different seeds, at most (the planner chooses how many)
    fill: bool = False  # time left after the planned models goes to another seed of the best one


PRESETS: dict[str, Preset] = {
    "medium_quality": Preset("medium_quality", ("fastnet", "frozen", "finetune"), 1, 0.0, False, 0, "none",
                             "one model: the from-scratch fast net, frozen pretrained features + head, or the "
                             "pretrained base fine-tuned at low resolution"),
    "high_quality": Preset("high_quality", ("fastnet", "frozen", "finetune_last"), 2, 0.35, True, 3, "none",
                           "up to two kinds of model (adds fine-tuning the last stages), fast-net seeds, soup, "
                           "ensemble, leftover time used", seeds=3, fill=True),
    "best_quality": Preset("best_quality", ("fastnet", "frozen", "finetune_last", "finetune"), 3, 0.45, True, 3,
                           "flip", "up to three kinds of model from all four candidates, seeds, soup, ensemble, flip "
                           "TTA, EMA weights, leftover time used", ema=True, seeds=3, fill=True),
}

MAX_SEEDS = 3
DEFAULT_PRESET = "medium_quality"
HIGH_QUALITY_FROM_S = 1200.0  #: without a preset, a time limit from 20 minutes on gets high_quality


def default_preset(time_limit: float | None) -> str:
    """The preset a fit gets when none is given (see the module docstring)."""
    return "high_quality" if time_limit is not None and time_limit >= HIGH_QUALITY_FROM_S else DEFAULT_PRESET


def get_preset(name: str | None, time_limit: float | None = None) -> Preset:
    """The preset called ``name`` (None: :func:`default_preset` of ``time_limit``); an unknown name
    is a ConfigError."""
    key = name or default_preset(time_limit)
    if key not in PRESETS:
        raise ConfigError(f"presets: unknown preset {key!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[key]
