"""Auto-fit under torchrun (``cnnlab fit --nproc-per-node N``): what keeps the ranks consistent.

Every rank loads the data (the same seed holds out the same validation split: checked here),
rank 0 alone measures and plans (the plan is broadcast), every rank trains each chosen
candidate together (orchestrate.train runs DDP under the process group), and rank 0 alone
writes the fit folder. Rank 0's clock is the fit's: its elapsed time is broadcast, so every
rank counts the time limit from rank 0's start. Without a process group each helper is a no-op.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np

from cnnlab.errors import DataError
from cnnlab.training import distributed as ddp
from cnnlab.utils.distributed import current


def world_size() -> int:
    return current().world_size


def synced_start(start: float, clock: Callable[[], float]) -> float:
    """This rank's ``clock()`` value of rank 0's ``start`` (rank 0's elapsed time, broadcast)."""
    if not current().enabled:
        return start
    elapsed = ddp.broadcast_object(clock() - start)
    return clock() - elapsed


def _fingerprint(*splits: Any) -> str:
    h = hashlib.sha1()
    for s in splits:
        if s is None:
            h.update(b"none")
            continue
        h.update(repr((len(s), list(s.class_names), tuple(np.shape(s.x)))).encode())
        h.update(np.ascontiguousarray(s.y).tobytes())
        h.update(np.ascontiguousarray(s.x[:: max(1, len(s) // 16)]).tobytes())  # a sample of the pixels
    return h.hexdigest()


def check_same_data(train: Any, val: Any, test: Any) -> None:
    """Refuse (on every rank) when this rank's train / validation / test split differs from rank 0's."""
    d = current()
    if not d.enabled:
        return
    mine = _fingerprint(train, val, test)
    theirs = ddp.broadcast_object(mine)
    (differ,) = ddp.reduce_sums(float(mine != theirs))
    if differ:
        raise DataError(f"data-parallel fit: {int(differ)} rank(s) loaded other train / validation / test images "
                        "than rank 0; give every machine the same data source")


def global_batches(kinds: tuple[str, ...], n_train: int) -> dict[str, int]:
    """Each candidate's global batch (split evenly over the ranks): its config's, or, for the fast
    net, the batch its recipe plans for ``n_train`` images."""
    from cnnlab.autofit.candidates import build_config
    from cnnlab.training.recipes.fast_plan import planned_batch

    out = {}
    for k in kinds:
        b = build_config(k, seconds=60, epochs=1).train.batch_size
        out[k] = planned_batch(b, n_train) if k == "fastnet" else b
    return out


def unsupported(kinds: tuple[str, ...], n_train: int) -> dict[str, str]:
    """The candidates that cannot train with this many ranks, and why (a global batch that does
    not divide evenly over them); empty without a process group."""
    w = world_size()
    if w <= 1:
        return {}
    return {k: f"its global batch {b} does not divide over the {w} processes"
            for k, b in global_batches(kinds, n_train).items() if b % w}
