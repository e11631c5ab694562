"""Training recipes other than the generic loop (``train.recipe`` in a config).

Each recipe is one module with a ``fit`` of the generic loop's shape, returning a
:class:`~cnnlab.training.loop.FitResult`, so ``cnnlab.api`` treats every run the same way.
"""

from __future__ import annotations

RECIPES = ("standard", "fast")
