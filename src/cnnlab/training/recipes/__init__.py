"""Training recipes (``train.recipe`` in a config): ``standard`` (standard.py: the generic
epoch recipe for any model) and ``fast`` (fast.py: the fast from-scratch CIFAR recipe).

Each recipe supplies its set-up, step loop, optimisers and schedule to the one trainer
(training/core.py) and returns a :class:`~cnnlab.training.core.FitResult`, so every run is
treated the same way.
"""

from __future__ import annotations

RECIPES = ("standard", "fast")
