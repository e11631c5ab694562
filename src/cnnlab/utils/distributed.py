"""Which data-parallel rank this process is (torchrun + torch.distributed set that up).

This module only *reads* the process group; nothing here creates one. A process that was not
started by torchrun (or whose group is not initialised) is rank 0 of 1, so every caller can ask
``current().is_main`` without caring whether training is distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place in the data-parallel job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes the run directory and logs."""
        return self.rank == 0


def current() -> Dist:
    """The initialised process group's rank and size, or rank 0 of 1."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return Dist()


def shard(indices: torch.Tensor, d: Dist | None = None) -> torch.Tensor:
    """This rank's share of a permutation that every rank computed alike (same seed).

    Every rank gets the same number of indices (the remainder is dropped, as
    ``DistributedSampler(drop_last=True)`` does), so all ranks run the same number of steps.
    """
    d = d or current()
    if not d.enabled:
        return indices
    per_rank = len(indices) // d.world_size
    return indices[d.rank : per_rank * d.world_size : d.world_size]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the ranks in place (a no-op for one process); returns ``t``."""
    if current().enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
