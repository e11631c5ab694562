"""Data-parallel training under torchrun: the process group's lifetime and the few collectives
the trainers need. PyTorch does the work (torch.distributed.run launches and watches the ranks,
DistributedDataParallel averages gradients); nothing here rendezvouses or talks sockets.

The process group is created only by :func:`session`, which the ``cnnlab train`` command enters
and a Python user enters explicitly under torchrun::

    # torchrun --nproc-per-node 2 my_script.py
    import cnnlab
    from cnnlab.training.distributed import session

    with session():
        cnnlab.train("experiments/mobilenet/I.yaml", data="my_images/")

Library calls never create a group themselves; without one every helper below is a no-op and
training is the ordinary one-process training.

Semantics (docs/distributed.md): ``train.batch_size`` is the *global* batch; each of the W
ranks takes the strided W-th of every global batch (rank r: elements r, r+W, ...), so per-rank
batch = batch_size / W and the learning rate, set for the global batch, needs no scaling. Only
rank 0 writes the run directory and logs; every rank takes the same stop decisions (rank 0's).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from cnnlab.errors import ConfigError, TrainingError
from cnnlab.utils.distributed import Dist, current, shard

TIMEOUT_ENV = "CNNLAB_DIST_TIMEOUT"  #: seconds a collective may wait for a missing rank
DEFAULT_TIMEOUT_S = 300.0


def timeout_seconds() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "")
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: expected a number of seconds > 0")
    return value


@contextlib.contextmanager
def session(timeout_s: float | None = None) -> Iterator[Dist]:
    """Join the data-parallel job torchrun started (its RANK, WORLD_SIZE, MASTER_ADDR, ...).

    Creates the process group only when ``WORLD_SIZE > 1`` and none exists yet (gloo on CPU,
    NCCL on CUDA, where this rank's GPU is ``cuda:LOCAL_RANK``), and destroys it on exit. A
    collective that waits longer than ``timeout_s`` (default ``$CNNLAB_DIST_TIMEOUT`` or 300 s)
    for a dead rank fails instead of hanging. Outside torchrun it yields rank 0 of 1.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or not dist.is_available() or dist.is_initialized():
        yield current()
        return
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: start the job with torchrun "
                          "or `cnnlab train --nproc-per-node N`")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s or timeout_seconds()))
    try:
        yield current()
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- the model


def check_supported(sync_batchnorm: bool, device: torch.device, recipe: str = "standard") -> None:
    """Refuse a distributed setting this machine cannot run (before any training)."""
    if not current().enabled or not sync_batchnorm:
        return
    if recipe == "fast":
        raise ConfigError("train.distributed.sync_batchnorm: the fast recipe keeps BatchNorm per rank "
                          "(rank 0's statistics are shared each epoch); set it to false")
    if device.type != "cuda":
        raise ConfigError("train.distributed.sync_batchnorm: true needs GPUs (PyTorch's SyncBatchNorm has no "
                          "CPU kernel); on CPUs use false (BatchNorm per rank) or a model without BatchNorm")


def wrap_model(model: nn.Module, device: torch.device, *, sync_batchnorm: bool = False) -> nn.Module:
    """``model`` for the training steps: DistributedDataParallel (with SyncBatchNorm if asked)
    under a process group, ``model`` itself otherwise. DDP copies rank 0's weights and buffers
    to every rank when it is built, and rank 0's buffers before every forward pass."""
    if not current().enabled:
        return model
    check_supported(sync_batchnorm, device)
    if sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP (or torch.compile) wrapper."""
    while isinstance(model, nn.parallel.DistributedDataParallel) or hasattr(model, "_orig_mod"):
        model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model._orig_mod
    return model


def broadcast_module(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (in place)."""
    if not current().enabled:
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def average_gradients(params: Sequence[torch.Tensor]) -> None:
    """Average ``p.grad`` over the ranks, in one flat all-reduce (the fast recipe's threads compute
    gradients with ``torch.autograd.grad``, which DDP's hooks do not see)."""
    d = current()
    if not d.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= d.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


# ----------------------------------------------------------------------------- the data


def per_rank_batch(batch_size: int, what: str = "train.batch_size") -> int:
    """Each rank's share of the global batch; the global batch must divide evenly."""
    d = current()
    if batch_size % d.world_size:
        raise ConfigError(f"{what}={batch_size} is the global batch and must be a multiple of the "
                          f"{d.world_size} processes")
    return batch_size // d.world_size


def batch_shard(global_idx: torch.Tensor) -> torch.Tensor:
    """This rank's strided part of one global batch: elements rank, rank+W, ... (a last, short
    batch drops its remainder modulo W, so every rank has the same number of images)."""
    return shard(global_idx)


def reduce_sums(*values: float | torch.Tensor) -> list[float]:
    """Sum each value over the ranks (float64); the values themselves for one process."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if current().enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def sharded_eval(logits_of: Callable[[Any], torch.Tensor], x: Any, y: Any) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of a model on (x, y), each rank scoring its strided part
    and the sums reduced: every rank gets the same numbers. ``logits_of(x_part)`` -> (n, C)."""
    import torch.nn.functional as F

    d = current()
    yt = torch.as_tensor(y)
    if d.enabled:
        part = torch.arange(d.rank, len(yt), d.world_size)
        x, yt = x[part.numpy()], yt[part]
    if len(yt):
        logits = logits_of(x).float()
        loss_sum = float(F.cross_entropy(logits, yt, reduction="sum"))
        correct = float((logits.argmax(1) == yt).sum())
    else:
        loss_sum = correct = 0.0
    loss_sum, correct, n = reduce_sums(loss_sum, correct, len(yt))
    return loss_sum / max(n, 1), correct / max(n, 1)


# ----------------------------------------------------------------------------- decisions, files


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; the ranks of one job trust each other)."""
    if not current().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def from_main(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only and return its result on every rank. An exception on rank 0 is
    raised on every rank (as a TrainingError on the others), so no rank waits for it."""
    d = current()
    if not d.enabled:
        return fn()
    result: Any = None
    error: BaseException | None = None
    if d.is_main:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - sent to the other ranks, then raised here
            error = exc
    result, message = broadcast_object((result, f"{type(error).__name__}: {error}" if error else None))
    if error is not None:
        raise error
    if message is not None:
        raise TrainingError(f"rank 0 failed: {message}")
    return result


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def main_log(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` on rank 0; the other ranks are quiet (their lines would repeat rank 0's)."""
    return log if current().is_main else (lambda line: None)


def load_state_from_main(folder: Path, model: nn.Module, optimizer: Any,
                         loader: Callable[..., tuple[dict[str, Any], dict[str, torch.Tensor]]]
                         ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Resume: rank 0 reads the saved state (``loader`` is training/state.py's ``load_state``)
    and every rank gets its weights, optimiser state, meta and extra tensors, so the other
    ranks need no copy of the run directory."""
    d = current()
    if not d.enabled:
        return loader(folder, model, optimizer)
    opts = optimizer if isinstance(optimizer, (list, tuple)) else [optimizer]
    payload = from_main(lambda: _load_payload(folder, model, optimizer, opts, loader))
    meta, extra, model_state, opt_states = payload
    if not d.is_main:
        model.load_state_dict(model_state)
        for opt, state in zip(opts, opt_states):
            opt.load_state_dict(state)
    return meta, extra


def _load_payload(folder: Path, model: nn.Module, optimizer: Any, opts: list[Any], loader: Callable[..., Any]):
    meta, extra = loader(folder, model, optimizer)
    cpu = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return meta, extra, cpu, [o.state_dict() for o in opts]


def describe(batch_size: int, backend_hint: str = "") -> str:
    """The log line that states the global batch, the per-rank batch and the learning-rate rule."""
    d = current()
    backend = dist.get_backend() if d.enabled else backend_hint
    return (f"data-parallel: {d.world_size} processes ({backend}), global batch {batch_size} = "
            f"{d.world_size} x {batch_size // d.world_size} per rank; the learning rate is the config's, "
            f"set for the global batch (no scaling with the number of processes)")


def summary(batch_size: int) -> dict[str, Any]:
    """What metrics.json records about the data-parallel job."""
    d = current()
    return {"world_size": d.world_size, "backend": dist.get_backend() if d.enabled else None,
            "global_batch": batch_size, "per_rank_batch": batch_size // d.world_size, "lr_scaling": "none"}


RUN_DIR_FILE_ENV = "CNNLAB_RUN_DIR_FILE"  #: set by the launcher: rank 0 writes its run directory there


def announce_run_dir(path: Path) -> None:
    """Tell the launcher (``cnnlab train --nproc-per-node``) which run directory this job writes,
    so that its failure message can say what to resume."""
    target = os.environ.get(RUN_DIR_FILE_ENV)
    if target:
        from cnnlab.utils.io import atomic_write_text

        atomic_write_text(Path(target), str(Path(path).resolve()))
