"""The fast recipe's parts: alternating flips, the lookahead average, parameter groups, worker
threads, parallel prediction, the FLOP count of a training step, the heap setting, and one
data-parallel training step over the worker threads (see fast.py for the recipe itself).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.evaluation.predict import as_nchw, predict_logits
from cnnlab.models.fastnet import set_thread_updates_bn_stats
from cnnlab.utils.hardware import autocast

def alternating_flip(x: torch.Tensor, idx: torch.Tensor, first_flips: torch.Tensor, epoch: int) -> torch.Tensor:
    """Flip images ``x`` (dataset indices ``idx``) as their first-epoch draw says in even epochs, and
    the other way in odd ones."""
    mask = first_flips[idx] if epoch % 2 == 0 else ~first_flips[idx]
    return torch.where(mask.view(-1, 1, 1, 1).to(x.device), x.flip(3), x)


def lookahead_average(slow: list[torch.Tensor], averaged: list[torch.Tensor], keep: float) -> None:
    """Lookahead: the slow weights keep ``keep`` of themselves, and the fast weights restart from them."""
    with torch.no_grad():
        torch._foreach_lerp_(slow, [t.detach() for t in averaged], 1.0 - keep)
        torch._foreach_copy_([t.detach() for t in averaged], slow)


def param_groups(model: nn.Module, lr: float, weight_decay: float, bias_lr_scale: float,
                 skip: set[int]) -> list[dict[str, Any]]:
    """Weights (decayed) and biases / BatchNorm shifts (faster, less decay); ``skip``: ids left out."""
    weights, biases = [], []
    for p in model.parameters():
        if p.requires_grad and id(p) not in skip:
            (weights if p.ndim >= 2 else biases).append(p)
    groups = [{"params": weights, "lr": lr, "initial_lr": lr, "weight_decay": weight_decay}]
    if biases:
        blr = lr * bias_lr_scale
        groups.append({"params": biases, "lr": blr, "initial_lr": blr,
                       "weight_decay": weight_decay / bias_lr_scale if bias_lr_scale else 0.0})
    return groups


class Workers:
    """Runs one function on the slices of a batch, one slice per thread (the caller takes slice 0).

    Torch kernels run single-threaded inside each worker (the recipe sets one intra-op thread),
    so the workers are the parallelism. Only the caller updates BatchNorm running statistics.
    """

    def __init__(self, n: int):
        self.n = max(1, n)
        self.active = self.n  # how many of them a data-parallel step uses (the process's core share)
        self.pool = (ThreadPoolExecutor(self.n - 1, thread_name_prefix="cnnlab-fast",
                                        initializer=set_thread_updates_bn_stats, initargs=(False,))
                     if self.n > 1 else None)

    def map(self, fn: Callable[..., Any], items: list[Any]) -> list[Any]:
        if self.pool is None or len(items) == 1:
            return [fn(*it) for it in items]
        futures = [self.pool.submit(fn, *it) for it in items[1:]]
        first = fn(*items[0])
        return [first] + [f.result() for f in futures]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def predict_parallel(model: nn.Module, x: np.ndarray | torch.Tensor, workers: Workers, *, tta: str = "none",
                     batch_size: int = 500, device: torch.device | None = None,
                     dtype: torch.dtype | None = None) -> torch.Tensor:
    """:func:`predict_logits` on ``workers.n`` slices of ``x`` at once (eval mode is set first)."""
    model.eval()
    xs = as_nchw(x)
    n = xs.shape[0]
    bounds = np.linspace(0, n, workers.n + 1).astype(int)
    parts = [(xs[a:b],) for a, b in zip(bounds[:-1], bounds[1:]) if b > a] or [(xs,)]

    def run(part: torch.Tensor) -> torch.Tensor:
        return predict_logits(model, part, batch_size=batch_size, device=device, dtype=dtype, tta=tta)

    return torch.cat(workers.map(run, parts))


def training_flops_per_image(model: nn.Module, loss_fn: Callable[[torch.Tensor], torch.Tensor],
                             image_shape: tuple[int, ...], params: list[torch.Tensor]) -> float:
    """FLOPs one training image costs (forward + backward, as executed), by PyTorch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    dev = next(model.parameters()).device
    x = torch.zeros((2, *image_shape), dtype=torch.uint8, device=dev)
    set_thread_updates_bn_stats(False)  # the probe must not move the running statistics
    try:
        with FlopCounterMode(display=False) as counter:
            torch.autograd.grad(loss_fn(model(x)), params)
    finally:
        set_thread_updates_bn_stats(True)
    return counter.get_total_flops() / 2


@contextlib.contextmanager
def heap_for_large_tensors() -> Iterator[None]:
    """Serve large allocations from the reused heap instead of fresh ``mmap`` pages (glibc only).

    glibc maps every block over 32 MB afresh, and the kernel zeroes each new page on first touch:
    measured here, writing a fresh 58 MB im2col buffer took 35 ms vs 11 ms into reused memory, and
    every large activation and gradient pays that each step. ``mallopt`` stops it for the
    duration; afterwards the freed memory is given back and the two settings return to what the
    process started with: glibc has no call that reads them, so that is the value of
    ``MALLOC_MMAP_MAX_`` / ``MALLOC_TRIM_THRESHOLD_`` when the caller set them, else glibc's
    default. A caller that tunes malloc itself sets ``CNNLAB_KEEP_MALLOC=1`` and nothing is touched.
    """
    libc = None
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError:
            libc = None
    m_trim_threshold, m_mmap_max = -1, -4
    if os.environ.get("CNNLAB_KEEP_MALLOC") == "1":
        libc = None
    ok = bool(libc) and libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    try:
        yield
    finally:
        if ok:
            libc.mallopt(m_mmap_max, int(os.environ.get("MALLOC_MMAP_MAX_", 65536)))
            libc.mallopt(m_trim_threshold, int(os.environ.get("MALLOC_TRIM_THRESHOLD_", 128 * 1024)))
            libc.malloc_trim(0)


class TrainStep:
    """One training step of ``model`` split over ``workers``: each worker runs forward and backward
    on its slice of the batch (weighted by its share), the caller sums the gradients into
    ``p.grad``. fp16 (GPUs) scales the loss so small gradients survive; bf16 and fp32 do not."""

    def __init__(self, model: nn.Module, workers: "Workers", device: torch.device, dtype: torch.dtype | None,
                 label_smoothing: float, balance: Any = None):
        self.model, self.workers, self.device, self.dtype = model, workers, device, dtype
        self.label_smoothing = label_smoothing
        self.balance = balance  # training/balance.py's Balance: the class-balanced loss (None: plain)
        self.loss_scale = 2.0**12 if dtype == torch.float16 else 1.0

    def _worker(self, xb: torch.Tensor, yb: torch.Tensor, params: list[torch.Tensor], weight: float):
        with autocast(self.device, self.dtype):
            logits = self.model(xb)
        logits = logits.float()
        loss = (self.balance.loss(logits, yb, self.label_smoothing) if self.balance is not None
                else F.cross_entropy(logits, yb, label_smoothing=self.label_smoothing))
        grads = torch.autograd.grad(loss * (weight * self.loss_scale), params)
        return grads, loss.detach() * len(yb), (logits.argmax(1) == yb).sum()

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, params: list[torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Gradients into ``p.grad`` for ``params``; returns (summed loss, correct count, ok). ``ok``
        is False when fp16 gradients overflowed (the step must be skipped; the scale is halved)."""
        n, k = len(yb), self.workers.active
        bounds = np.linspace(0, n, k + 1).astype(int)
        items = [(xb[a:b], yb[a:b], params, (b - a) / n) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        results = self.workers.map(self._worker, items)
        for i, p in enumerate(params):
            g = results[0][0][i]
            for r in results[1:]:
                g = g + r[0][i]
            p.grad = g
        ok = True
        if self.loss_scale != 1.0:
            grads = [p.grad for p in params]
            if not all(torch.isfinite(g).all() for g in grads):
                self.loss_scale /= 2
                ok = False
            else:
                torch._foreach_div_(grads, self.loss_scale)
        return sum(r[1] for r in results), sum(r[2] for r in results), ok
