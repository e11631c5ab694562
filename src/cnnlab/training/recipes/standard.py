"""The standard recipe: in-memory uint8 batches -> augmentation -> model -> optimiser.

Reads top to bottom: ``_train_epoch`` runs one epoch's steps, ``_Standard`` is this recipe's
part of the trainer (model set-up, optimiser, schedule, validation), and ``fit`` runs it on the
trainer core (training/core.py), which owns the epoch loop, the history, the checkpoints, early
stopping, the resumable state and the other callbacks. Everything is seeded per epoch
(shuffling, augmentation, dropout), so a resumed run is the same run.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from cnnlab.config import ExperimentConfig
from cnnlab.data.augment import augment_batch
from cnnlab.data.dataset import ImageArrays
from cnnlab.errors import TrainingError
from cnnlab.evaluation.predict import as_nchw, fits_on_device, predict_logits
from cnnlab.models.classifier import ImageClassifier
from cnnlab.models.cpu_kernels import optimize_for_cpu
from cnnlab.models.io import save_model
from cnnlab.training import balance as class_balance
from cnnlab.training import distributed as ddp
from cnnlab.training.balance import Balance
from cnnlab.training.callbacks import Deadline
from cnnlab.training.core import EpochCallback, FitResult, Trainer, config_callbacks
from cnnlab.training.optim import build_optimizer
from cnnlab.training.rundir import RunDir
from cnnlab.training.sanity import MIN_STEPS, check_finite_weights, check_not_collapsed
from cnnlab.training.schedules import lr_factor
from cnnlab.utils.cores import compute_threads, rebalance_threads
from cnnlab.utils.hardware import autocast, choose_precision, default_device

__all__ = ["EpochCallback", "FitResult", "fit", "finish"]


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
    after_step: Callable[[int], None] | None = None,
    balance: Balance | None = None,
) -> tuple[float, float, int]:
    """One pass over the data; returns (mean loss, accuracy, steps done). ``after_step(step)``
    runs after every optimiser step (the weight average); ``balance`` (training/balance.py) picks
    the epoch's images and the loss."""
    tc = cfg.train
    bs = tc.batch_size
    n = x.shape[0]
    steps = math.ceil(n / bs)
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    torch.manual_seed(cfg.seed * 7_919 + epoch)  # dropout and other in-model randomness
    perm = balance.order(n, gen) if balance is not None else torch.randperm(n, generator=gen)
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
        loss = (balance.loss(logits, yb, tc.label_smoothing) if balance is not None
                else F.cross_entropy(logits, yb, label_smoothing=tc.label_smoothing))
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
        if after_step is not None:
            after_step(step + 1)
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


class _Standard:
    """The standard recipe's part of the trainer (core.EpochRecipe): its optimiser, its schedule,
    its per-epoch step loop and validation, and the step count as its resumable state."""

    def __init__(self, cfg: ExperimentConfig, model: nn.Module, train: ImageArrays, val: ImageArrays | None,
                 progress: bool):
        tc = self.tc = cfg.train
        self.cfg, self.model, self.val, self.progress = cfg, model, val, progress
        self.images = train.x.ndim == 4
        self.device = default_device()
        self.precision = choose_precision(tc.precision, self.device)
        model.to(self.device)
        if tc.channels_last and self.images:
            model.to(memory_format=torch.channels_last)
            if tc.cpu_kernels and self.device.type == "cpu":
                optimize_for_cpu(model)
        # The weight average (timm's ModelEmaV3; its first update copies the weights): validation,
        # checkpoints and the final model use it.
        self.ema = None
        if tc.ema is not None:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(model, decay=tc.ema)
        self.eval_model = self.ema.module if self.ema is not None else model
        self.opt = build_optimizer(model, tc.optimizer)
        self.optimizers = [self.opt]
        if ddp.current().enabled:  # DDP: the global batch split over the ranks, gradients averaged by DDP
            ddp.per_rank_batch(tc.batch_size)
        train_model = ddp.wrap_model(model, self.device, sync_batchnorm=tc.distributed.sync_batchnorm)
        self.step_model = torch.compile(train_model) if tc.compile else train_model
        x = as_nchw(train.x) if self.images else torch.from_numpy(train.x)
        y = torch.from_numpy(train.y)
        if self.device.type != "cpu" and fits_on_device(x, self.device):
            x, y = x.to(self.device), y.to(self.device)  # the whole uint8 set lives on the GPU
        # else pixels decoded to disk are read batch by batch (evaluation/predict.py: NCHWRows)
        self.x, self.y = x, y
        self.balance = class_balance.from_config(tc, train.y, list(train.class_names)).to(self.device)
        self.total_steps = math.ceil(len(y) / tc.batch_size) * tc.epochs
        self.step = 0

    def more(self, epoch: int) -> bool:
        return epoch < self.tc.epochs

    def planned_epochs(self) -> int:
        return self.tc.epochs

    def predict(self, model: nn.Module, xs: Any) -> torch.Tensor:
        return predict_logits(model, xs, batch_size=self.tc.eval_batch_size, device=self.device,
                              dtype=self.precision.dtype, channels_last=self.tc.channels_last and self.images)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        t0 = time.perf_counter()
        loss, acc, steps = _train_epoch(self.step_model, self.opt, self.x, self.y, self.cfg, epoch, self.step,
                                        self.total_steps, self.device, self.precision.dtype, self.progress,
                                        self.images, self._update_ema if self.ema is not None else None,
                                        self.balance)
        self.step += steps
        train_seconds = time.perf_counter() - t0
        logs = {"loss": loss, "accuracy": acc}
        if self.val is not None and len(self.val):
            # DDP: each rank scores its strided part of the validation split; the sums are reduced
            vloss, logs["val_accuracy"] = ddp.sharded_eval(lambda xs: self.predict(self.eval_model, xs),
                                                           self.val.x, self.val.y)
            penalty = self.eval_model.l2_penalty()
            logs["val_loss"] = vloss + float(penalty.detach().cpu()) if penalty is not None else vloss
        logs["lr"] = self.opt.param_groups[-1]["lr"]
        logs["seconds"] = time.perf_counter() - t0
        logs["images_per_second"] = len(self.y) / train_seconds
        return logs

    def _update_ema(self, step: int) -> None:
        self.ema.update(self.model, step=step)

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        ema = {f"ema.{k}": v for k, v in self.ema.module.state_dict().items()} if self.ema is not None else {}
        return {"step": self.step}, ema

    def load_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.step = int(meta["step"])
        if self.ema is not None:
            self.ema.module.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})


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
    deadline: float | Deadline | None = None,
    weights_model: nn.Module | None = None,
) -> FitResult:
    """Train ``model`` as ``cfg.train`` says, writing history, checkpoints and state to ``run_dir``.

    ``train``/``val`` hold uint8 images, or pre-computed feature vectors (``x`` of shape (N, D))
    when only a head is trained on cached features (``weights_model``: the whole classifier, whose
    weights the checkpoints hold). ``stage`` names a later training stage (its resume state lives
    in ``state/<stage>``); ``prior_history`` holds earlier stages' rows. ``deadline``: see
    :class:`~cnnlab.training.callbacks.TimeBudget`.
    """
    tc = cfg.train
    recipe = _Standard(cfg, model, train, val, progress)
    if recipe.precision.downgraded:
        log(recipe.precision.note())
    if recipe.balance.mode != "none":
        log(recipe.balance.describe())
    if ddp.current().enabled:
        log(ddp.describe(tc.batch_size))  # DDP: the global batch, the per-rank batch, the learning-rate rule
    if recipe.ema is not None:
        weights_model = recipe.ema.module  # (orchestrate.py trains no head on cached features with an EMA)
    trainer = Trainer(recipe, run_dir, config_callbacks(tc, deadline=deadline, epoch_callback=epoch_callback),
                      state_dir=run_dir.state / stage if stage else run_dir.state, log=log, stage=stage,
                      prior_history=prior_history, weights_model=weights_model)
    result = trainer.fit(resume=resume)
    if recipe.ema is not None:
        model.load_state_dict(recipe.ema.module.state_dict())  # the final model is the average
        log(f"the model holds the weights' moving average (decay {tc.ema:g})")
    check_finite_weights(model, tc.optimizer.lr)
    # The training accuracy of the epoch whose weights the model holds (restore_best_weights: an earlier one).
    train_acc = next((h["accuracy"] for h in result.history if h["epoch"] == result.weights_epoch), None)
    if train_acc is not None:
        check_not_collapsed(model, train.x, train.y, train_acc, class_names=train.class_names, seed=cfg.seed,
                            predict=recipe.predict, warn_only=recipe.step < MIN_STEPS, log=log)
    return result


def finish(result: FitResult, extra_card: dict[str, Any] | None = None) -> None:
    """Save the final model and card, and drop the resume state (the run is complete)."""
    import shutil

    save_model(result.model, result.run_dir.path, extra_card)
    shutil.rmtree(result.run_dir.state, ignore_errors=True)
