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


def predicted_accuracy(kind: str, *, per_class: int, epochs: float, num_classes: int, image_side: int) -> float:
    """The prior validation accuracy of candidate ``kind`` (see the module docstring)."""
    p = PRIORS[kind]
    acc = p.accuracy * min(1.0, max(per_class, 1) / ANCHOR_PER_CLASS) ** p.data_exponent
    if p.epoch_exponent:
        acc *= min(1.0, max(epochs, 0.0) / p.full_epochs) ** p.epoch_exponent
    if kind != "fastnet" and image_side >= 96:
        acc += PHOTO_BONUS
    skill = max(0.0, min(1.0, (acc - 0.1) / 0.9))
    chance = 1.0 / max(num_classes, 2)
    return chance + (1.0 - chance) * skill
