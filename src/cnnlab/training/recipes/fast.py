"""The fast recipe: a small whitened conv net trained in a few epochs (``train.recipe: fast``).

The training ideas are the published fast-CIFAR-10 ones (Page 2018; Jordan 2024, "94% on
CIFAR-10 in 3.29 seconds on a single GPU"), implemented here from their descriptions:

- the first layer is a frozen patch-whitening convolution computed from training images,
  and only its bias trains, for the first few epochs;
- identity-initialised convolutions, BatchNorm with a fixed unit scale and fast statistics;
- label smoothing; Nesterov SGD with a linear warm-up and a linear decay, biases at a
  higher learning rate;
- parameter averaging by lookahead (every k steps the slow weights move toward the fast
  ones and the fast weights restart from them); the slow weights are the result;
- translation by up to ``augment.crop_padding`` pixels (reflect padding) and *alternating*
  flips: each image gets a random flip decision in the first epoch and the opposite one in
  every odd epoch, so consecutive epochs see both sides of every image;
- the evaluation (and the final test, via ``train.tta``) can average flipped and translated
  views: that is cnnlab's :func:`~cnnlab.evaluation.predict.predict_logits`.

CPU execution: bf16 autocast where the CPU has bf16 instructions (fp32 elsewhere, same code),
channels-last memory, the whole data set as uint8 tensors augmented a batch at a time, and one
worker thread per physical core, each running forward and backward on its slice of the batch
with single-threaded kernels; the main thread adds the gradients and steps the optimiser. On
the shared 2-core machine this is what keeps the cores busy: oneDNN's multi-threaded weight
gradients stall for seconds when another process takes a core (measured up to 80x slower),
while two independent single-threaded workers just slow down in proportion. On a GPU there is
one worker and the same code runs with fp16/bf16.

Reads top to bottom: the options and their defaults, then :func:`fit`.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.config import ExperimentConfig
from cnnlab.data.augment import random_crop
from cnnlab.data.dataset import ImageArrays
from cnnlab.errors import ConfigError, TrainingError
from cnnlab.evaluation.metrics import accuracy
from cnnlab.evaluation.predict import TTA_MODES, as_nchw, predict_logits
from cnnlab.models.classifier import ImageClassifier
from cnnlab.models.fastnet import FastConv2d, init_whitening, set_thread_updates_bn_stats
from cnnlab.training.loop import EpochCallback, FitResult
from cnnlab.training.recipes.muon import Muon
from cnnlab.training.rundir import RunDir
from cnnlab.training.sanity import check_trained_model
from cnnlab.training.schedules import lr_factor
from cnnlab.utils.hardware import autocast, default_device, physical_cores, resolve_precision, setup_threads

#: The recipe's own knobs; a config changes them with ``train.recipe_options: {name: value}``.
OPTIONS: dict[str, Any] = {
    "bias_lr_scale": 1.0,  # biases and BatchNorm shifts: this times the learning rate, 1/this the decay
    "whiten_bias_epochs": 3,  # the whitening bias trains during the first epochs only
    "whiten_samples": 5000,  # training images that define the whitening filters
    "whiten_eps": 5e-4,  # added to the patch-covariance eigenvalues
    "lookahead_every": 5,  # parameter averaging every k steps: the slow weights keep decay ** k ...
    "lookahead_decay": 0.95,  # ... times (progress) ** 3 of themselves (0: no averaging)
    "workers": 0,  # CPU worker threads, each on a slice of every batch (0: one per physical core)
    "monitor_tta": "none",  # test-time augmentation of the per-epoch accuracy (target_accuracy)
    "optimizer": "sgd",  # "muon": Muon (recipes/muon.py) for the conv filters, SGD for the rest
    "muon_lr": 0.1,  # Muon's peak learning rate (the schedule scales it like train.optimizer.lr)
    "muon_momentum": 0.6,
    "max_train_minutes": 0.0,  # > 0: after the first epoch, train fewer epochs if they would not fit
}


def options(given: dict[str, Any]) -> dict[str, Any]:
    """The recipe options with ``given`` applied; unknown names are a ConfigError."""
    unknown = sorted(set(given) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"train.recipe_options: unknown option {unknown[0]!r} for the fast recipe; "
                          f"allowed: {', '.join(sorted(OPTIONS))}")
    out = dict(OPTIONS)
    for k, v in given.items():
        default = OPTIONS[k]
        if isinstance(default, str):
            allowed = {"monitor_tta": TTA_MODES, "optimizer": ("sgd", "muon")}[k]
            if v not in allowed:
                raise ConfigError(f"train.recipe_options.{k}: {v!r} is not one of {', '.join(allowed)}")
            out[k] = v
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"train.recipe_options.{k}: expected a number, got {v!r}")
        else:
            out[k] = type(default)(v)
            if out[k] < 0:
                raise ConfigError(f"train.recipe_options.{k}: must not be negative, got {v!r}")
    return out


# ----------------------------------------------------------------------------- pieces


def alternating_flip(x: torch.Tensor, idx: torch.Tensor, first_flips: torch.Tensor, epoch: int) -> torch.Tensor:
    """Flip images ``x`` (dataset indices ``idx``) as their first-epoch draw says in even epochs, and
    the other way in odd ones."""
    mask = first_flips[idx] if epoch % 2 == 0 else ~first_flips[idx]
    return torch.where(mask.view(-1, 1, 1, 1).to(x.device), x.flip(3), x)


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
    duration; afterwards the settings are restored and the freed memory given back.
    """
    libc = None
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError:
            libc = None
    m_trim_threshold, m_mmap_max = -1, -4
    ok = bool(libc) and libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    try:
        yield
    finally:
        if ok:
            libc.mallopt(m_mmap_max, 65536)
            libc.mallopt(m_trim_threshold, 128 * 1024)
            libc.malloc_trim(0)


# ----------------------------------------------------------------------------- the loop


def fit(
    cfg: ExperimentConfig,
    model: ImageClassifier,
    train: ImageArrays,
    val: ImageArrays | None,
    run_dir: RunDir,
    *,
    resume: bool = False,
    progress: bool = True,
    epoch_callback: EpochCallback | None = None,
    log: Callable[[str], None] = print,
    test: ImageArrays | None = None,
) -> FitResult:
    """Train ``model`` with the fast recipe. Writes ``history.csv`` to ``run_dir`` after each epoch.

    The accuracy watched for ``train.target_accuracy`` is the validation split's; without one
    (the fast presets train on all 50,000 images) it is the test split's, as the published
    time-to-accuracy benchmarks do, and the log says so.
    """
    tc = cfg.train
    opt_cfg = tc.optimizer
    o = options(tc.recipe_options)
    if opt_cfg.name != "sgd":
        raise ConfigError(f"the fast recipe trains with Nesterov SGD: set train.optimizer.name to 'sgd' "
                          f"(got {opt_cfg.name!r})")
    if resume:
        log("the fast recipe keeps no resume state; training again from the start")
    setup_threads()
    device = default_device()
    dtype = resolve_precision(tc.precision, device)
    n_workers = 1 if device.type != "cpu" else (int(o["workers"]) or physical_cores())
    old_threads = torch.get_num_threads()
    workers = Workers(n_workers)
    if n_workers > 1:
        torch.set_num_threads(1)  # each worker runs single-threaded kernels
    try:
        with heap_for_large_tensors():
            return _fit(cfg, model, train, val, test, run_dir, o, device, dtype, workers, progress,
                        epoch_callback, log)
    finally:
        workers.close()
        torch.set_num_threads(old_threads)
        set_thread_updates_bn_stats(True)


def _fit(cfg: ExperimentConfig, model: ImageClassifier, train: ImageArrays, val: ImageArrays | None,
         test: ImageArrays | None, run_dir: RunDir, o: dict[str, Any], device: torch.device,
         dtype: torch.dtype | None, workers: Workers, progress: bool, epoch_callback: EpochCallback | None,
         log: Callable[[str], None]) -> FitResult:
    tc = cfg.train
    label_smoothing = tc.label_smoothing
    translate = tc.augment.crop_padding
    flip = tc.augment.flip
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # -- data: uint8 images (N, 3, H, W) and labels, on the device that trains
    x_all = as_nchw(train.x)
    y_all = torch.from_numpy(train.y)
    if device.type != "cpu":
        x_all, y_all = x_all.to(device), y_all.to(device)
    n = len(y_all)
    batch_size = min(tc.batch_size, n)
    steps_per_epoch = max(1, n // batch_size)  # the last, partial batch is dropped
    epochs = tc.epochs  # may shrink after the first epoch to fit recipe_options.max_train_minutes
    total_steps = steps_per_epoch * epochs
    first_flips = torch.rand(n, generator=gen) < 0.5

    # -- model: whitening from the data, memory format, trainable parameters
    model.to(device)
    if tc.channels_last:
        model.to(memory_format=torch.channels_last)
    pick = torch.randperm(n, generator=gen)[: int(o["whiten_samples"])]
    init_whitening(model, x_all[pick.to(x_all.device)], eps=o["whiten_eps"])
    whiten_bias = model.backbone.whiten.bias
    step_model = torch.compile(model) if tc.compile else model

    def loss_fn(logits: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), torch.zeros(len(logits), dtype=torch.long, device=logits.device),
                               label_smoothing=label_smoothing)

    all_params = [p for p in model.parameters() if p.requires_grad]
    flops_per_image = training_flops_per_image(model, loss_fn, tuple(x_all.shape[1:]), all_params)

    # -- optimisers: Nesterov SGD for everything, or Muon for the conv filters and SGD for the rest
    # (biases, BatchNorm shifts, the classifier). The whitening bias has its own group so it can stop.
    lr, wd = tc.optimizer.lr, tc.optimizer.weight_decay
    filters = ([m.weight for m in model.backbone.modules() if isinstance(m, FastConv2d)]
               if o["optimizer"] == "muon" else [])
    groups = param_groups(model, lr, wd, o["bias_lr_scale"], skip={id(whiten_bias)} | {id(p) for p in filters})
    groups.append({"params": [whiten_bias], "lr": lr * o["bias_lr_scale"],
                   "initial_lr": lr * o["bias_lr_scale"], "weight_decay": 0.0})
    opts: list[torch.optim.Optimizer] = [
        torch.optim.SGD(groups, lr=lr, momentum=tc.optimizer.momentum, nesterov=tc.optimizer.nesterov)]
    if filters:
        opts.append(Muon(filters, lr=o["muon_lr"], momentum=o["muon_momentum"], nesterov=True,
                         parallel_map=workers.map, chunks=workers.n))
        for g in opts[-1].param_groups:
            g["initial_lr"] = o["muon_lr"]

    # -- parameter averaging (lookahead) over the parameters and BatchNorm statistics
    averaged = [p for p in model.parameters() if p.requires_grad] + [
        b for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var"))]
    slow = [t.detach().clone() for t in averaged] if o["lookahead_decay"] > 0 else None
    la_every = max(1, int(o["lookahead_every"]))

    monitor, monitor_name = (val, "val") if val is not None and len(val) else (None, "")
    if monitor is None and tc.target_accuracy is not None and test is not None:
        monitor, monitor_name = test, "test"
        log("target_accuracy: no validation split, so the test split's accuracy is watched "
            "(as in published time-to-accuracy results)")

    # fp16 (GPUs) needs its loss scaled so small gradients survive; bf16 and fp32 do not.
    loss_scale = 2.0**12 if dtype == torch.float16 else 1.0

    def worker_step(xb: torch.Tensor, yb: torch.Tensor, params: list[torch.Tensor], weight: float):
        with autocast(device, dtype):
            logits = step_model(xb)
        logits = logits.float()
        loss = F.cross_entropy(logits, yb, label_smoothing=label_smoothing)
        grads = torch.autograd.grad(loss * (weight * loss_scale), params)
        return grads, loss.detach() * len(yb), (logits.argmax(1) == yb).sum()

    log(f"fast recipe: {n:,} images, batch {batch_size}, {steps_per_epoch} steps x {epochs} epochs, "
        f"{flops_per_image / 1e9:.3f} GFLOP per training image, {workers.n} worker(s), "
        f"{'fp32' if dtype is None else str(dtype).replace('torch.', '')} on {device.type}")
    history: list[dict[str, float]] = []
    step, train_seconds, stopped, stop_reason = 0, 0.0, False, ""
    for epoch in range(tc.epochs):
        if epoch >= epochs:
            break
        model.train()
        train_bias = epoch < o["whiten_bias_epochs"]
        whiten_bias.requires_grad_(train_bias)  # frozen, the first conv needs no input gradient
        params = [p for p in all_params if train_bias or p is not whiten_bias]
        perm = torch.randperm(n, generator=gen)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        t0 = time.perf_counter()
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            xb = x_all[idx.to(x_all.device)]
            yb = y_all[idx.to(y_all.device)]
            if translate:
                xb = random_crop(xb, translate, gen)
            if flip:
                xb = alternating_flip(xb, idx, first_flips, epoch)
            if tc.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            factor = lr_factor(tc.schedule, step, total_steps, steps_per_epoch, lr)
            for opt in opts:
                for g in opt.param_groups:
                    g["lr"] = g["initial_lr"] * factor
            bounds = np.linspace(0, len(idx), workers.n + 1).astype(int)
            items = [(xb[a:b], yb[a:b], params, (b - a) / len(idx)) for a, b in zip(bounds[:-1], bounds[1:])]
            results = workers.map(worker_step, items)
            for k, p in enumerate(params):
                g = results[0][0][k]
                for r in results[1:]:
                    g = g + r[0][k]
                p.grad = g
            if not train_bias:
                whiten_bias.grad = None
            if loss_scale != 1.0:
                grads = [p.grad for p in params]
                if not all(torch.isfinite(g).all() for g in grads):
                    loss_scale /= 2  # overflow: skip this step with a smaller scale next time
                    continue
                torch._foreach_div_(grads, loss_scale)
            for opt in opts:
                opt.step()
            step += 1
            batch_loss = sum(r[1] for r in results)
            if not torch.isfinite(batch_loss):
                raise TrainingError(f"the loss became {float(batch_loss)} at epoch {epoch + 1}, step {i + 1}; "
                                    f"training stopped (try a lower learning rate than {lr:g})")
            loss_sum += batch_loss
            correct += sum(r[2] for r in results)
            if slow is not None and (step % la_every == 0 or step == total_steps):
                # The slow weights' share ramps up as (progress)^3: no averaging while the learning
                # rate is high, decay**k of the slow weights at the end (a lagging average early on
                # only slows training down; late, it averages out the noise of the last steps).
                keep = o["lookahead_decay"] ** la_every * (step / total_steps) ** 3
                with torch.no_grad():
                    torch._foreach_lerp_(slow, [t.detach() for t in averaged], 1.0 - keep)
                    torch._foreach_copy_([t.detach() for t in averaged], slow)
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        seen = steps_per_epoch * batch_size
        logs: dict[str, float] = {"epoch": epoch + 1, "loss": float(loss_sum) / seen, "accuracy": int(correct) / seen,
                                  "lr": opts[0].param_groups[0]["lr"], "seconds": seconds,
                                  "train_seconds_total": train_seconds, "images_per_second": seen / seconds,
                                  "gflops_per_second": flops_per_image * seen / seconds / 1e9}
        if monitor is not None:
            vlogits = predict_parallel(model, monitor.x, workers, tta=o["monitor_tta"], device=device, dtype=dtype,
                                       batch_size=tc.eval_batch_size)
            vy = torch.from_numpy(monitor.y)
            logs[f"{monitor_name}_loss"] = float(F.cross_entropy(vlogits, vy))
            logs[f"{monitor_name}_accuracy"] = accuracy(vlogits, vy)
        history.append(logs)
        run_dir.write_history(history)
        log(_log_line(epoch, epochs, logs, monitor_name))
        if epoch_callback is not None:
            epoch_callback(epoch, logs)
        if epoch == 0 and o["max_train_minutes"] > 0 and seconds * epochs > 60 * o["max_train_minutes"]:
            # The time budget: the first epoch's speed says how many epochs fit; the schedule
            # (a function of step / total_steps) is re-planned for that many.
            fit_epochs = max(1, int(60 * o["max_train_minutes"] // seconds))
            log(f"time budget: {epochs} epochs would take about {seconds * epochs / 60:.1f} min at this speed, "
                f"over max_train_minutes={o['max_train_minutes']:g}; training {fit_epochs} epochs instead")
            epochs = fit_epochs
            total_steps = steps_per_epoch * epochs
        if tc.target_accuracy is not None and logs.get(f"{monitor_name}_accuracy", -1.0) >= tc.target_accuracy:
            stopped = True
            stop_reason = (f"reached target {monitor_name}_accuracy {tc.target_accuracy} after "
                           f"{train_seconds:.1f} s of training (epoch {epoch + 1})")
            log(stop_reason)
            break

    model.eval()
    whiten_bias.requires_grad_(True)
    check_trained_model(model, train, history, lr)  # training/sanity.py: finite weights, no one-class collapse
    rates = sorted(h["images_per_second"] for h in history)
    images = sum(steps_per_epoch * batch_size for _ in history)
    return FitResult(
        model=model, history=history, run_dir=run_dir, epochs_run=len(history), stopped_early=stopped,
        stop_reason=stop_reason, train_seconds=train_seconds,
        images_per_second=rates[len(rates) // 2] if rates else 0.0,
        extra={"recipe": "fast", "workers": workers.n, "train_gflop_per_image": flops_per_image / 1e9,
               "train_gflops_per_second": flops_per_image * images / max(train_seconds, 1e-9) / 1e9,
               "precision": "fp32" if dtype is None else str(dtype).replace("torch.", ""),
               "monitor": monitor_name or None, "options": o},
    )


def _log_line(epoch: int, epochs: int, logs: dict[str, float], monitor: str) -> str:
    parts = [f"Epoch {epoch + 1}/{epochs}", f"{logs['seconds']:.0f}s", f"loss: {logs['loss']:.4f}",
             f"accuracy: {logs['accuracy']:.4f}"]
    if monitor:
        parts.append(f"{monitor}_accuracy: {logs[f'{monitor}_accuracy']:.4f}")
    parts += [f"lr: {logs['lr']:.2e}", f"{logs['images_per_second']:.0f} img/s",
              f"{logs['gflops_per_second']:.0f} GFLOP/s"]
    return " - ".join(parts)
