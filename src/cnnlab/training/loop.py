"""The training loop: in-memory uint8 batches -> augmentation -> model -> optimiser.

Reads top to bottom: ``fit`` builds the pieces, ``_train_epoch`` runs one epoch, and after each
epoch the logs go to the history, the callbacks and the resumable state. Everything is seeded
per epoch (shuffling, augmentation, dropout), so a resumed run is the same run.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from cnnlab.config import ExperimentConfig
from cnnlab.data.augment import augment_batch
from cnnlab.data.dataset import ImageArrays
from cnnlab.errors import TrainingError
from cnnlab.evaluation.predict import as_nchw, predict_logits
from cnnlab.models.classifier import ImageClassifier
from cnnlab.models.cpu_kernels import optimize_for_cpu
from cnnlab.models.io import save_model, save_weights
from cnnlab.training import distributed as ddp
from cnnlab.training.callbacks import BestCheckpoint, EarlyStopping, StopTraining
from cnnlab.training.optim import build_optimizer
from cnnlab.training.rundir import RunDir
from cnnlab.training.sanity import MIN_STEPS, check_finite_weights, check_not_collapsed
from cnnlab.training.schedules import lr_factor
from cnnlab.training.state import load_state, save_state
from cnnlab.utils.cores import compute_threads, rebalance_threads
from cnnlab.utils.hardware import autocast, choose_precision, default_device

#: Called after each epoch with (epoch, logs). Raising StopTraining ends training after this epoch
#: (the run finishes normally); any other exception aborts the run (Optuna's pruning).
EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class FitResult:
    model: ImageClassifier
    history: list[dict[str, float]]
    run_dir: RunDir
    epochs_run: int
    best_epoch: int | None = None
    stopped_early: bool = False
    stop_reason: str = ""
    train_seconds: float = 0.0
    images_per_second: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _log_line(epoch: int, epochs: int, logs: dict[str, float]) -> str:
    parts = [f"Epoch {epoch + 1}/{epochs}", f"{logs['seconds']:.0f}s"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in logs and not math.isnan(logs[key]):
            parts.append(f"{key}: {logs[key]:.4f}")
    parts.append(f"lr: {logs['lr']:.2e}")
    parts.append(f"{logs['images_per_second']:.0f} img/s")
    return " - ".join(parts)


def _train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: ExperimentConfig,
    epoch: int,
    step0: int,
    total_steps: int,
    device: torch.device,
    dtype: torch.dtype | None,
    progress: bool,
    images: bool = True,
) -> tuple[float, float, int]:
    """One pass over the data; returns (mean loss, accuracy, steps done)."""
    tc = cfg.train
    bs = tc.batch_size
    n = x.shape[0]
    steps = math.ceil(n / bs)
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    torch.manual_seed(cfg.seed * 7_919 + epoch)  # dropout and other in-model randomness
    perm = torch.randperm(n, generator=gen)
    aug = tc.augment
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    bar = tqdm(total=n, desc=f"Epoch {epoch + 1}/{tc.epochs}", unit="img", leave=False,
               disable=not progress or None, file=sys.stderr, dynamic_ncols=True)
    t0 = time.perf_counter()
    base_lrs = [g["initial_lr"] for g in opt.param_groups]
    seen = 0
    for i in range(steps):
        if i % 25 == 0:
            rebalance_threads()  # another process may have started or ended on these cores
        step = step0 + i
        idx = ddp.batch_shard(perm[i * bs : (i + 1) * bs])  # DDP: this rank's strided part of batch i
        if not len(idx):
            continue  # DDP: a last batch smaller than the number of processes (every rank skips it)
        xb = x[idx.to(x.device)] if x.device != idx.device else x[idx]
        yb = y[idx.to(y.device)] if y.device != idx.device else y[idx]
        if images and (aug.crop_padding or aug.flip or aug.cutout):
            xb = augment_batch(xb, gen, crop_padding=aug.crop_padding, flip=aug.flip, cutout_size=aug.cutout)
        xb = xb.to(device, non_blocking=True)
        yb = yb.to(device, non_blocking=True)
        if tc.channels_last and images:
            xb = xb.contiguous(memory_format=torch.channels_last)
        factor = lr_factor(tc.schedule, step, total_steps, steps, tc.optimizer.lr)
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * factor
        with autocast(device, dtype):
            logits = model(xb)
        logits = logits.float()
        loss = F.cross_entropy(logits, yb, label_smoothing=tc.label_smoothing)
        inner = ddp.unwrap(model)  # DDP: the penalty is the model's own, not the wrapper's
        penalty = inner.l2_penalty() if hasattr(inner, "l2_penalty") else None
        if penalty is not None:
            loss = loss + penalty  # Keras reports the loss with its regularisation terms
        if device.type == "cpu" or i % 50 == 0:
            if not torch.isfinite(loss):
                bar.close()
                raise TrainingError(
                    f"the loss became {float(loss.detach())} at epoch {epoch + 1}, step {i + 1}; "
                    f"training stopped (try a lower learning rate than {tc.optimizer.lr:g})"
                )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach() * len(yb)
        correct += (logits.detach().argmax(1) == yb).sum()
        seen += len(yb)
        if bar.disable is False and (i % 10 == 0 or i == steps - 1):
            done = min(n, (i + 1) * bs)
            rate = done / max(1e-9, time.perf_counter() - t0)
            bar.set_postfix(loss=f"{float(loss_sum) / done:.4f}", acc=f"{int(correct) / done:.4f}",
                            ips=f"{rate:.0f}", refresh=False)
            bar.update(done - bar.n)
    bar.close()
    loss_total, correct_total, seen_total = ddp.reduce_sums(loss_sum, correct, seen)  # DDP: over all ranks
    if not math.isfinite(loss_total):  # off the CPU only every 50th step is checked above
        raise TrainingError(
            f"the loss became {loss_total} during epoch {epoch + 1}; "
            f"training stopped (try a lower learning rate than {tc.optimizer.lr:g})"
        )
    return loss_total / max(seen_total, 1), correct_total / max(seen_total, 1), steps


def fit(*args: Any, **kwargs: Any) -> FitResult:
    """Train ``model`` as ``cfg.train`` says (see :func:`_fit`), with this process's share of the
    CPU cores (utils/cores.py); the caller's thread count is restored afterwards."""
    with compute_threads():
        return _fit(*args, **kwargs)


def _fit(
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
    stage: str = "",
    prior_history: list[dict[str, float]] | None = None,
) -> FitResult:
    """Train ``model`` as ``cfg.train`` says, writing history, checkpoints and state to ``run_dir``.

    ``train``/``val`` hold uint8 images, or pre-computed feature vectors (``x`` of shape (N, D))
    when only a head is trained on cached features. ``stage`` names a later training stage
    (its resume state lives in ``state/<stage>``); ``prior_history`` holds earlier stages' rows.
    """
    tc = cfg.train
    images = train.x.ndim == 4
    prior = list(prior_history or [])
    main = ddp.current().is_main  # DDP: rank 0 alone writes the run directory
    state_dir = run_dir.state / stage if stage else run_dir.state
    device = default_device()
    precision = choose_precision(tc.precision, device)
    if precision.downgraded:
        log(precision.note())
    dtype = precision.dtype
    model.to(device)
    if tc.channels_last and images:
        model.to(memory_format=torch.channels_last)
        if tc.cpu_kernels and device.type == "cpu":
            optimize_for_cpu(model)
    opt = build_optimizer(model, tc.optimizer)
    if ddp.current().enabled:  # DDP: global batch split over the ranks, gradients averaged by DDP
        ddp.per_rank_batch(tc.batch_size)
        log(ddp.describe(tc.batch_size))
    train_model = ddp.wrap_model(model, device, sync_batchnorm=tc.distributed.sync_batchnorm)
    step_model = torch.compile(train_model) if tc.compile else train_model

    x = as_nchw(train.x) if images else torch.from_numpy(train.x)
    y = torch.from_numpy(train.y)
    if device.type != "cpu":
        x, y = x.to(device), y.to(device)  # the whole uint8 set lives on the GPU
    steps_per_epoch = math.ceil(len(y) / tc.batch_size)
    total_steps = steps_per_epoch * tc.epochs

    es = EarlyStopping(**vars(tc.early_stopping)) if tc.early_stopping else None
    ckpt = BestCheckpoint(tc.checkpoint.monitor, tc.checkpoint.mode) if tc.checkpoint else None
    history: list[dict[str, float]] = []
    start_epoch, step, stopped, stop_reason = 0, 0, False, ""
    best_restore: dict[str, torch.Tensor] | None = None
    if resume:
        meta, extra = ddp.load_state_from_main(state_dir, model, opt, load_state)  # DDP: rank 0's state
        start_epoch, step = meta["epoch"] + 1, meta["step"]
        history, stopped, stop_reason = meta["history"][len(prior):], meta["stopped"], meta.get("stop_reason", "")
        if es and meta.get("early_stopping"):
            es.load_state_dict(meta["early_stopping"])
        if ckpt and meta.get("checkpoint"):
            ckpt.load_state_dict(meta["checkpoint"])
        best_restore = {k[5:]: v for k, v in extra.items() if k.startswith("best.")} or None
        log(f"resuming {run_dir.path} after epoch {start_epoch} of {tc.epochs}")

    epoch = start_epoch - 1
    for epoch in range(start_epoch, tc.epochs):
        if stopped:
            break
        t0 = time.perf_counter()
        loss, acc, steps = _train_epoch(step_model, opt, x, y, cfg, epoch, step, total_steps,
                                        device, dtype, progress, images)
        step += steps
        train_seconds = time.perf_counter() - t0
        logs = {"epoch": len(prior) + epoch + 1, "loss": loss, "accuracy": acc}
        if stage:
            logs["stage"] = stage
        if val is not None and len(val):
            # DDP: each rank scores its strided part of the validation split; the sums are reduced
            vloss, logs["val_accuracy"] = ddp.sharded_eval(
                lambda xs: predict_logits(model, xs, batch_size=tc.eval_batch_size, device=device, dtype=dtype,
                                          channels_last=tc.channels_last and images), val.x, val.y)
            penalty = model.l2_penalty()
            logs["val_loss"] = vloss + float(penalty.detach().cpu()) if penalty is not None else vloss
            if not math.isfinite(logs["val_loss"]):  # the training loss can stay finite meanwhile
                raise TrainingError(
                    f"the validation loss became {logs['val_loss']} after epoch {epoch + 1}; "
                    f"training stopped (try a lower learning rate than {tc.optimizer.lr:g})")
        logs["lr"] = opt.param_groups[-1]["lr"]
        logs["seconds"] = time.perf_counter() - t0
        logs["images_per_second"] = len(y) / train_seconds
        history.append(logs)
        log(_log_line(epoch, tc.epochs, logs))

        if ckpt and ckpt.on_epoch_end(epoch, logs) and main:
            save_weights(model, run_dir / "best.safetensors")
        if es:
            improved, stop = es.on_epoch_end(epoch, logs)
            if improved and es.restore_best_weights:
                best_restore = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if stop:
                stopped, stop_reason = True, (
                    f"early stopping: {es.monitor} did not improve for {es.patience} epochs "
                    f"(best {es.best:.4f} at epoch {es.best_epoch + 1})")
        if tc.target_accuracy is not None and logs.get("val_accuracy", -1) >= tc.target_accuracy:
            stopped, stop_reason = True, f"reached target val_accuracy {tc.target_accuracy}"
        if epoch_callback is not None:
            try:
                epoch_callback(epoch, logs)
            except StopTraining as exc:
                if not stopped:
                    stopped, stop_reason = True, str(exc) or "stopped by a callback"
        stopped, stop_reason = ddp.broadcast_object((stopped, stop_reason))  # DDP: rank 0's decision holds
        if main:
            run_dir.write_history(prior + history)
            save_state(state_dir, model, opt, {
                "epoch": epoch, "step": step, "history": prior + history, "stopped": stopped,
                "stop_reason": stop_reason, "early_stopping": es.state_dict() if es else None,
                "checkpoint": ckpt.state_dict() if ckpt else None,
            }, extra_tensors={f"best.{k}": v for k, v in (best_restore or {}).items()})
        if stopped:
            log(stop_reason)
            break

    if es and es.restore_best_weights and best_restore is not None:
        model.load_state_dict(best_restore)
        log(f"restored the weights of epoch {es.best_epoch + 1} (best {es.monitor})")
    model.eval()
    check_finite_weights(model, tc.optimizer.lr)
    # The training accuracy of the epoch whose weights the model holds (restore_best_weights: an earlier one).
    held = len(prior) + (es.best_epoch if es and es.restore_best_weights and best_restore is not None
                         else epoch) + 1
    train_acc = next((h["accuracy"] for h in history if h["epoch"] == held), None)
    if train_acc is not None:
        check_not_collapsed(
            model, train.x, train.y, train_acc, class_names=train.class_names, seed=cfg.seed,
            predict=lambda m, xs: predict_logits(m, xs, batch_size=tc.eval_batch_size, device=device, dtype=dtype,
                                                 channels_last=tc.channels_last and images),
            warn_only=step < MIN_STEPS, log=log)
    seconds = sum(h["seconds"] for h in history)
    rates = sorted(h["images_per_second"] for h in history)
    return FitResult(
        model=model,
        history=history,
        run_dir=run_dir,
        epochs_run=len(history),
        best_epoch=(ckpt.best_epoch + 1) if ckpt else ((es.best_epoch + 1) if es and es.best_epoch >= 0 else None),
        stopped_early=stopped,
        stop_reason=stop_reason,
        train_seconds=seconds,
        images_per_second=rates[len(rates) // 2] if rates else 0.0,  # median epoch
    )


def finish(result: FitResult, extra_card: dict[str, Any] | None = None) -> None:
    """Save the final model and card, and drop the resume state (the run is complete)."""
    import shutil

    save_model(result.model, result.run_dir.path, extra_card)
    shutil.rmtree(result.run_dir.state, ignore_errors=True)
