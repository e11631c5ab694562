"""The planner's prior: each candidate's validation accuracy, predicted from measured results.

The anchors are this project's own measurements on CIFAR-10 (benchmarks/RESULTS.md, 2-core CPUs,
about 4,500 training images per class):

=============  ========  =====================================================================
candidate      accuracy  measured run
=============  ========  =====================================================================
fastnet        0.87      the fast recipe sized to 10 minutes: 8.2 epochs of the [32,128,128] net
frozen         0.806     efficientnet_lite0 frozen at 224 px, cached features, trained head
finetune_last  0.86      not measured: placed between the frozen and the fully fine-tuned rows
finetune       0.90      efficientnet_lite0 fully fine-tuned at 96 px, 2 epochs
=============  ========  =====================================================================

The fast net's anchor depends on the width its recipe picks for the time it gets
(fast_plan.WIDTH_LADDER, the stem width here), at 8 or more epochs:

=====  ========  ===============================================================================
stem   accuracy  source
=====  ========  ===============================================================================
24     0.85      not measured: below the 32 row
32     0.87      the 10-minute fit on the 2-core Zen 3 (8.2 epochs)
48     0.89      not measured: between the 32 and 64 rows
64     0.905     ``make run`` on the 2-core Sapphire Rapids: 14 epochs, 90.45% test (issue 24)
96     0.907     not measured: between the 64 and 128 rows
128    0.909     the 30-minute fit on the same machine: 12 epochs, 90.89% test (issue 24)
=====  ========  ===============================================================================

Several fast nets from different seeds, averaged by the ensemble, remove a share of the single
net's error: :data:`ENSEMBLE_ERROR` (0.90 for two, 0.85 for three): an assumption from the
published ensembles of small CIFAR-10 nets, not yet measured here (the lead's quiet-core fits
will check it; plan.json records the prediction beside the result).

An anchor is scaled by ``min(1, per_class / 4500) ** data_exponent`` (from scratch suffers most
from few images: 0.12; pretrained features least: 0.04) and by
``min(1, epochs / full_epochs) ** epoch_exponent`` (fewer epochs than the anchor's). Pretrained
candidates gain :data:`PHOTO_BONUS` on images of at least 96 px (ImageNet features fit real
photos better than CIFAR's upsampled 32 px). The result is read as skill over chance on 10
classes and mapped onto the data's number of classes: ``1/C + (1 - 1/C) * skill``. plan.json
records each prediction beside the accuracy the candidate then reached.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prior:
    accuracy: float  # on CIFAR-10 (10 classes) at the anchor's data size and epochs
    full_epochs: float
    data_exponent: float
    epoch_exponent: float


ANCHOR_PER_CLASS = 4500
PHOTO_BONUS = 0.05
PRIORS: dict[str, Prior] = {
    "fastnet": Prior(0.87, 8.0, 0.12, 0.25),
    "frozen": Prior(0.806, 1.0, 0.04, 0.0),
    "finetune_last": Prior(0.86, 2.0, 0.06, 0.3),
    "finetune": Prior(0.90, 2.0, 0.06, 0.3),
}


FASTNET_BY_WIDTH = {24: 0.85, 32: 0.87, 48: 0.89, 64: 0.905, 96: 0.907, 128: 0.909}
ENSEMBLE_ERROR = {1: 1.0, 2: 0.90, 3: 0.85}


def ensemble_accuracy(single: float, runs: int) -> float:
    """The predicted accuracy of ``runs`` seeds of a model whose single run predicts ``single``."""
    return 1.0 - (1.0 - single) * ENSEMBLE_ERROR[min(max(runs, 1), max(ENSEMBLE_ERROR))]


def predicted_accuracy(kind: str, *, per_class: int, epochs: float, num_classes: int, image_side: int,
                       width: int | None = None) -> float:
    """The prior validation accuracy of candidate ``kind`` (see the module docstring); ``width``:
    the fast net's stem width, when known."""
    kind = kind.split("_seed")[0]
    p = PRIORS[kind]
    anchor = FASTNET_BY_WIDTH.get(width, p.accuracy) if kind == "fastnet" and width else p.accuracy
    acc = anchor * min(1.0, max(per_class, 1) / ANCHOR_PER_CLASS) ** p.data_exponent
    if p.epoch_exponent:
        acc *= min(1.0, max(epochs, 0.0) / p.full_epochs) ** p.epoch_exponent
    if kind != "fastnet" and image_side >= 96:
        acc += PHOTO_BONUS
    skill = max(0.0, min(1.0, (acc - 0.1) / 0.9))
    chance = 1.0 / max(num_classes, 2)
    return chance + (1.0 - chance) * skill
