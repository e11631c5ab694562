"""The auto-fit presets, named as AutoGluon's for familiarity, and what each one chooses.

=================  ==========================================================================
preset             what it chooses
=================  ==========================================================================
medium_quality     one model: the candidate with the best predicted validation accuracy among
                   the from-scratch fast net and frozen ImageNet features + a trained head;
                   no ensemble, no soup. The quickest to fit and to predict.
high_quality       up to two models (adds fine-tuning the last stages), the second when it
                   fits in at most 35% of the time; a greedy soup of the top-3 checkpoints of
                   the fine-tuned candidates; a validation-weighted ensemble when it scores
                   higher on validation than the best single model.
best_quality       up to three models from all four candidates (adds full fine-tuning at a
                   chosen resolution), extras in at most 45% of the time; soup and ensemble as
                   high_quality; flip test-time augmentation and EMA weights (decay chosen
                   from the planned steps: candidates.ema_decay) for the fine-tuned candidates.
=================  ==========================================================================
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


PRESETS: dict[str, Preset] = {
    "medium_quality": Preset("medium_quality", ("fastnet", "frozen"), 1, 0.0, False, 0, "none",
                             "one model: the from-scratch fast net or frozen pretrained features + head"),
    "high_quality": Preset("high_quality", ("fastnet", "frozen", "finetune_last"), 2, 0.35, True, 3, "none",
                           "up to two models (adds fine-tuning the last stages), soup, ensemble"),
    "best_quality": Preset("best_quality", ("fastnet", "frozen", "finetune_last", "finetune"), 3, 0.45, True, 3,
                           "flip", "up to three models from all four candidates, soup, ensemble, flip TTA, EMA weights",
                           ema=True),
}

DEFAULT_PRESET = "medium_quality"


def get_preset(name: str | None) -> Preset:
    """The preset called ``name`` (None: medium_quality); an unknown name is a ConfigError."""
    key = name or DEFAULT_PRESET
    if key not in PRESETS:
        raise ConfigError(f"presets: unknown preset {key!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[key]
