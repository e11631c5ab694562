"""Train / validation splits and training-subset selection."""

from __future__ import annotations

import numpy as np

from cnnlab.data.dataset import ImageArrays
from cnnlab.errors import DataError


def split_train_val(
    data: ImageArrays, fraction: float, method: str = "stratified", seed: int = 0
) -> tuple[ImageArrays, ImageArrays | None]:
    """Hold out ``fraction`` of ``data`` for validation.

    ``stratified``: a seeded per-class shuffle, so each class keeps its share in both parts.
    ``keras``: the last ``fraction`` of the arrays, exactly as Keras's ``validation_split`` does.
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"validation_split must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return data, None
    n = len(data)
    if method == "keras":
        cut = int(n * (1.0 - fraction))
        return data.subset(np.arange(cut)), data.subset(np.arange(cut, n))
    if method != "stratified":
        raise DataError(f"split_method must be 'stratified' or 'keras', got {method!r}")
    rng = np.random.default_rng(seed)
    val_idx = []
    for c in range(data.num_classes):
        idx = np.flatnonzero(data.y == c)
        rng.shuffle(idx)
        k = int(round(len(idx) * fraction))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)  # every class on both sides when it can be
        else:
            k = 0
        val_idx.append(idx[:k])
    val = np.sort(np.concatenate(val_idx))
    train = np.setdiff1d(np.arange(n), val)
    if len(val) == 0:
        raise DataError(f"validation_split={fraction} leaves no validation images out of {n}")
    return data.subset(train), data.subset(val)


def limit_samples(data: ImageArrays, max_samples: int | None, seed: int = 0) -> ImageArrays:
    """A seeded, class-balanced subset of at most ``max_samples`` images (None: all)."""
    if max_samples is None or max_samples >= len(data):
        return data
    if max_samples <= 0:
        raise DataError(f"max_train_samples must be positive, got {max_samples}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data))
    # Round-robin over classes in the shuffled order keeps the subset balanced.
    by_class = [order[data.y[order] == c] for c in range(data.num_classes)]
    picked: list[int] = []
    depth = 0
    while len(picked) < max_samples:
        added = False
        for idx in by_class:
            if depth < len(idx) and len(picked) < max_samples:
                picked.append(int(idx[depth]))
                added = True
        if not added:
            break
        depth += 1
    return data.subset(np.sort(np.array(picked)))
