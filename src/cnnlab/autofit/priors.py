"""The planner's prior: each candidate's validation accuracy, predicted from measured results.

The anchors are this project's own measurements on CIFAR-10 (benchmarks/RESULTS.md, 2-core CPUs,
about 4,500 training images per class):

=============  ========  =====================================================================
candidate      accuracy  measured run
=============  ========  =====================================================================
fastnet        0.87      the fast recipe sized to 10 minutes: 8.2 epochs of the [32,128,128] net
frozen         0.806     efficientnet_lite0 frozen at 224 px, cached features, trained head
finetune_last  0.873     the 30-minute fit on quiet Zen 4 cores (RESULTS.md, session 7):
                         efficientnet_lite0's last blocks at 128 px, 2 epochs, 87.29% test;
                         its epoch exponent 0.03 from the same config trained 1 epoch alone
                         (RESULTS.md, session 8: 85.45% test, 0.979 of the 2-epoch figure;
                         it was 0.3, unmeasured, and predicted 0.709 for that epoch)
finetune       0.90      efficientnet_lite0 fully fine-tuned at 96 px, 2 epochs
=============  ========  =====================================================================

The full fine-tune's one later row is long-tailed CIFAR-10 (RESULTS.md, session 7: 12,406 images,
50 in the smallest class, 2 epochs at 96 px): validation 0.820 (imbalanced), balanced test 77.95%.
It is no anchor (not 4,500 images a class) and changes no number here; it checks the data
scaling: at the mean class size (1,240) the prior gives 0.833, at the smallest class's 45
training images (after the validation split) 0.683, which is what the planner uses
(``per_class_min``): a long tail is under-predicted.

The fast net's anchor depends on the width its recipe picks for the time it gets
(fast_plan.WIDTH_LADDER, the stem width here), at 8 or more epochs:

=====  ========  ===============================================================================
stem   accuracy  source
=====  ========  ===============================================================================
24     0.85      not measured: below the 32 row
32     0.87      the 10-minute fit on the 2-core Zen 3 (8.2 epochs)
48     0.881     the two 10-minute fits on quiet Zen 4 cores (RESULTS.md, session 7): validation
                 87.80% (8.25 epochs) and 88.38% (9.52 epochs), their mean
64     0.901     the mean of two measured runs: ``make run`` on the 2-core Sapphire Rapids, 14
                 epochs, 90.45% test (issue 24); the 30-minute fit on quiet Zen 4 cores, 11 epochs,
                 89.69% test (RESULTS.md, session 7)
96     0.907     not measured: between the 64 and 128 rows
128    0.909     the 30-minute fit on the Sapphire Rapids: 12 epochs, 90.89% test (issue 24)
=====  ========  ===============================================================================

Several fast nets from different seeds, averaged by the ensemble, remove a share of the single
net's error: :data:`ENSEMBLE_ERROR` (0.90 for two, 0.85 for three): an assumption from the
published ensembles of small CIFAR-10 nets, not yet measured here for seeds (plan.json records
the prediction beside the result). The one ensemble measured, across kinds (the 30-minute fit on
Zen 4: the fast net 89.69% and finetune_last 87.29% test, ensembled 91.14%), kept 0.86 of the
better net's error.

An anchor is scaled by ``min(1, per_class / 4500) ** data_exponent`` (from scratch suffers most
from few images: 0.12; pretrained features least: 0.04) and by
``min(1, epochs / full_epochs) ** epoch_exponent`` (fewer epochs than the anchor's). Pretrained
candidates gain :data:`PHOTO_BONUS` on images of at least 96 px (ImageNet features fit real
photos better than CIFAR's upsampled 32 px). The result is read as skill over chance on 10
classes and mapped onto the data's number of classes: ``1/C + (1 - 1/C) * skill``. plan.json
records each prediction beside the accuracy the candidate then reached.

These anchors are the bundled starting point only. Each finished auto-fit candidate is appended
to a history file under the cnnlab home, and the planner shifts each kind's skill by what that
history says the kind delivered against these priors (history.py: the mean residual in skill
space over the records of similar data, shrunk towards zero by n / (n + 5), bounded; the
``shift`` of :func:`predicted_accuracy`).
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
    "finetune_last": Prior(0.873, 2.0, 0.06, 0.03),
    "finetune": Prior(0.90, 2.0, 0.06, 0.3),
}


FASTNET_BY_WIDTH = {24: 0.85, 32: 0.87, 48: 0.881, 64: 0.901, 96: 0.907, 128: 0.909}
ENSEMBLE_ERROR = {1: 1.0, 2: 0.90, 3: 0.85}


def ensemble_accuracy(single: float, runs: int) -> float:
    """The predicted accuracy of ``runs`` seeds of a model whose single run predicts ``single``."""
    return 1.0 - (1.0 - single) * ENSEMBLE_ERROR[min(max(runs, 1), max(ENSEMBLE_ERROR))]


def skill(accuracy: float, num_classes: int) -> float:
    """Accuracy as skill over chance on ``num_classes`` classes: 0 at chance, 1 when perfect."""
    chance = 1.0 / max(num_classes, 2)
    return (accuracy - chance) / (1.0 - chance)


def predicted_accuracy(kind: str, *, per_class: int, epochs: float, num_classes: int, image_side: int,
                       width: int | None = None, shift: float = 0.0) -> float:
    """The prior validation accuracy of candidate ``kind`` (see the module docstring); ``width``:
    the fast net's stem width, when known; ``shift``: added to the skill over chance before it is
    mapped onto the classes (history.py's correction from this project's own results)."""
    kind = kind.split("_seed")[0]
    p = PRIORS[kind]
    anchor = FASTNET_BY_WIDTH.get(width, p.accuracy) if kind == "fastnet" and width else p.accuracy
    acc = anchor * min(1.0, max(per_class, 1) / ANCHOR_PER_CLASS) ** p.data_exponent
    if p.epoch_exponent:
        acc *= min(1.0, max(epochs, 0.0) / p.full_epochs) ** p.epoch_exponent
    if kind != "fastnet" and image_side >= 96:
        acc += PHOTO_BONUS
    over = max(0.0, min(1.0, (acc - 0.1) / 0.9 + shift))
    chance = 1.0 / max(num_classes, 2)
    return chance + (1.0 - chance) * over
