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

Sizing: with ``size: auto`` and a time budget the width, epochs, batch and TTA views are
chosen from this machine's measured speed (fast_plan.py); the pieces (workers, the parallel
step, parameter groups) live in fast_parts.py.

Reads top to bottom: :func:`fit` sets up the worker threads; :class:`FastRun` holds the run's
state and options (fast_options.FastOptions) and sets up the data, the model, the optimisers and
the averaging, then ``train_epoch`` (one epoch's steps, the monitor's accuracy and the time-budget
re-planning) and the resumable state, run on the trainer core (training/core.py), which owns the
history, checkpoints, early stopping, target accuracy, the caller's epoch callback and the
resumable state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from cnnlab.config import ExperimentConfig
from cnnlab.data.augment import random_crop
from cnnlab.data.dataset import ImageArrays
from cnnlab.errors import TrainingError
from cnnlab.evaluation.predict import as_nchw, fits_on_device
from cnnlab.models.classifier import ImageClassifier
from cnnlab.models.fastnet import FastConv2d, init_whitening, set_thread_updates_bn_stats
from cnnlab.training import balance as class_balance
from cnnlab.training import distributed as ddp
from cnnlab.training.callbacks import Deadline, EarlyStopping, as_deadline
from cnnlab.training.core import EpochCallback, FitResult, Trainer, config_callbacks
from cnnlab.training.recipes import fast_plan
from cnnlab.training.recipes.fast_options import IGNORED_KEYS, OPTIONS, FastOptions, check_config, options
from cnnlab.training.recipes.fast_parts import (TrainStep, Workers, alternating_flip, heap_for_large_tensors,
                                                lookahead_average, param_groups, predict_parallel,
                                                training_flops_per_image)
from cnnlab.training.recipes.muon import Muon
from cnnlab.training.rundir import RunDir
from cnnlab.training.sanity import check_trained_model
from cnnlab.training.schedules import lr_factor
from cnnlab.training.state import META as STATE_META
from cnnlab.utils.cores import compute_threads, share_now
from cnnlab.utils.hardware import choose_precision, default_device

__all__ = ["OPTIONS", "IGNORED_KEYS", "options", "check_config", "fit", "Workers", "predict_parallel",
           "heap_for_large_tensors"]

# The recipe's options (OPTIONS, their defaults) and the keys it refuses: fast_options.py.


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
    started_at: float | None = None,
    deadline: float | Deadline | None = None,
) -> FitResult:
    """Train ``model`` with the fast recipe. Writes ``history.csv`` to ``run_dir`` after each epoch.

    The accuracy watched for ``train.target_accuracy`` is the validation split's; without one
    (the fast presets train on all 50,000 images) it is the test split's, as the published
    time-to-accuracy benchmarks do, and the log says so. ``started_at`` (``time.monotonic()``)
    is when the run began, for ``time_limit_minutes`` (default: now). With ``size: auto`` the
    returned model is a new one of the planned width (``result.extra["plan"]`` says why).
    """
    tc = cfg.train
    check_config(cfg)
    o = options(tc.recipe_options)
    started_at = time.monotonic() if started_at is None else started_at
    device = default_device()
    precision = choose_precision(tc.precision, device)
    log(precision.note())
    with compute_threads() as share:
        # One worker per core of this process's share (utils/cores.py), each single-threaded.
        n_workers = 1 if device.type != "cpu" else (int(o["workers"]) or share.threads())
        workers = Workers(n_workers)
        torch.set_num_threads(1 if n_workers > 1 else torch.get_num_threads())
        try:
            with heap_for_large_tensors():
                run = FastRun(cfg, model, train, val, test, run_dir, o, device, precision, workers, log,
                              started_at, resume, deadline)
                return run.run(resume, epoch_callback)
        finally:
            workers.close()
            set_thread_updates_bn_stats(True)


class FastRun:
    """One fast-recipe run: its part of the trainer (core.EpochRecipe) and the state it carries
    between epochs as attributes (the step, the planned length, the training time, the flips, the
    slow weights). Reads top to bottom: the set-up (plan, data, model, optimisers, averaging, the
    watched split), ``train_epoch`` and the time-budget re-planning, the resumable state, then
    :meth:`run` on the trainer core and :meth:`finish`."""

    def __init__(self, cfg: ExperimentConfig, model: ImageClassifier, train: ImageArrays, val: ImageArrays | None,
                 test: ImageArrays | None, run_dir: RunDir, o: dict[str, Any], device: torch.device,
                 precision: Any, workers: Workers, log: Callable[[str], None], started_at: float, resume: bool,
                 deadline: float | Deadline | None = None):
        self.t_setup = time.perf_counter()
        # The caller's bound (the deadline the core's TimeBudget reads, less its reserve), read once
        # on time.monotonic, the clock of the plan and the re-planning: neither ends training later.
        bound = as_deadline(deadline)
        self.bound = bound.training_end_monotonic() if bound is not None else None
        self.train, self.val, self.test, self.run_dir = train, val, test, run_dir
        self.o, self.opts = o, FastOptions(**o)
        self.device, self.precision, self.workers, self.log = device, precision, workers, log
        self.started_at = started_at
        # after training, validation (once: the temperature's fit) and test go through inference
        n_eval = sum(len(s) for s in (val, test) if s is not None)
        # DDP: rank 0 alone plans (it measures, writes plan.json); every rank trains rank 0's plan, and
        # rank 0's clock is the one the time budget is checked against (its decisions are broadcast).
        self.cfg, self.model, self.plan, self.train_deadline = ddp.from_main(lambda: fast_plan.plan_run(
            cfg, model, train, n_eval, o, device, precision, workers,
            started_at, run_dir, log, resume, self.bound))
        self.tc = self.cfg.train
        self.dtype = precision.dtype
        self.gen = torch.Generator().manual_seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)
        self._data()
        self._model()
        self._optimisers()
        self._averaging()
        self._monitor()
        self.balance = class_balance.from_config(self.tc, train.y, list(train.class_names)).to(device)
        if self.balance.mode != "none":
            log(self.balance.describe())
        self.train_step = TrainStep(self.step_model, workers, device, self.dtype, self.tc.label_smoothing,
                                    self.balance)
        self.step, self.train_seconds = 0, 0.0
        self.averaged_at = 0  # the step of the last lookahead average
        self.max_steps = self.total_steps  # the re-planning's cap (set in run)
        self.trainer: Trainer | None = None

    # ------------------------------------------------------------------------- set-up

    def _data(self) -> None:
        """uint8 images (N, 3, H, W) and labels on the device that trains; the batch and the length."""
        tc, device = self.tc, self.device
        x_all = as_nchw(self.train.x)
        y_all = torch.from_numpy(self.train.y)
        if device.type != "cpu":
            # pixels decoded to disk too large for the device stay there, read batch by batch (NCHWRows)
            x_all = x_all.to(device) if fits_on_device(x_all, device) else x_all
            y_all = y_all.to(device)
        self.x_all, self.y_all = x_all, y_all
        self.n = n = len(y_all)
        self.batch_size = min(tc.batch_size, n)
        if ddp.current().enabled:  # DDP: the global batch, split evenly over the ranks
            ddp.per_rank_batch(self.batch_size, "train.batch_size (or the planned batch)")
            ddp.check_supported(tc.distributed.sync_batchnorm, device, "fast")
            if self.dtype == torch.float16:
                raise TrainingError("the fast recipe under torchrun trains in fp32 or bf16, not fp16 "
                                    "(set train.precision)")
            self.log(ddp.describe(self.batch_size))
        self.steps_per_epoch = max(1, n // self.batch_size)  # the last, partial batch is dropped
        self.epochs = tc.epochs  # re-planned after each epoch when a time budget is set; the last may be partial
        self.total_steps = self.plan.total_steps if self.plan is not None else self.steps_per_epoch * self.epochs
        self.first_flips = torch.rand(n, generator=self.gen) < 0.5

    def _model(self) -> None:
        """Whitening from the data, memory format, the trainable parameters and their FLOP count."""
        model, tc = self.model, self.tc
        model.to(self.device)
        if tc.channels_last:
            model.to(memory_format=torch.channels_last)
        pick = torch.randperm(self.n, generator=self.gen)[: self.opts.whiten_samples]
        init_whitening(model, self.x_all[pick.to(self.x_all.device)], eps=self.opts.whiten_eps)
        ddp.broadcast_module(model)  # DDP: every rank starts from rank 0's weights
        self.whiten_bias = model.backbone.whiten.bias
        self.step_model = torch.compile(model) if tc.compile else model
        label_smoothing = tc.label_smoothing

        def loss_fn(logits: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits.float(), torch.zeros(len(logits), dtype=torch.long, device=logits.device),
                                   label_smoothing=label_smoothing)

        self.all_params = [p for p in model.parameters() if p.requires_grad]
        self.flops_per_image = training_flops_per_image(model, loss_fn, tuple(self.x_all.shape[1:]), self.all_params)

    def _optimisers(self) -> None:
        """Nesterov SGD for everything, or Muon for the conv filters and SGD for the rest (biases,
        BatchNorm shifts, the classifier). The whitening bias has its own group so it can stop."""
        model, o = self.model, self.opts
        self.lr, wd = self.tc.optimizer.lr, self.tc.optimizer.weight_decay
        lr = self.lr
        filters = ([m.weight for m in model.backbone.modules() if isinstance(m, FastConv2d)]
                   if o.optimizer == "muon" else [])
        groups = param_groups(model, lr, wd, o.bias_lr_scale, skip={id(self.whiten_bias)} | {id(p) for p in filters})
        groups.append({"params": [self.whiten_bias], "lr": lr * o.bias_lr_scale,
                       "initial_lr": lr * o.bias_lr_scale, "weight_decay": 0.0})
        self.optimizers: list[torch.optim.Optimizer] = [
            torch.optim.SGD(groups, lr=lr, momentum=self.tc.optimizer.momentum, nesterov=self.tc.optimizer.nesterov)]
        if filters:
            # Muon's orthogonalisation in bf16 only where the precision rule trains in bf16.
            self.optimizers.append(Muon(filters, lr=o.muon_lr, momentum=o.muon_momentum, nesterov=True,
                                        parallel_map=self.workers.map, chunks=self.workers.n,
                                        ns_dtype=torch.bfloat16 if self.dtype == torch.bfloat16 else torch.float32))
            for g in self.optimizers[-1].param_groups:
                g["initial_lr"] = o.muon_lr

    def _averaging(self) -> None:
        """Parameter averaging (lookahead) over the parameters and BatchNorm statistics."""
        self.averaged = [p for p in self.model.parameters() if p.requires_grad] + [
            b for name, b in self.model.named_buffers() if name.endswith(("running_mean", "running_var"))]
        self.slow = [t.detach().clone() for t in self.averaged] if self.opts.lookahead_decay > 0 else None
        self.la_every = max(1, self.opts.lookahead_every)

    def _monitor(self) -> None:
        """The split whose accuracy each epoch reports (and train.target_accuracy watches)."""
        val, test = self.val, self.test
        self.monitor, self.monitor_name = (val, "val") if val is not None and len(val) else (None, "")
        if self.monitor is None and self.tc.target_accuracy is not None and test is not None:
            self.monitor, self.monitor_name = test, "test"
            self.log("target_accuracy: no validation split, so the test split's accuracy is watched "
                     "(as in published time-to-accuracy results)")

    # ------------------------------------------------------------------------- the epochs (core.EpochRecipe)

    def more(self, epoch: int) -> bool:
        return self.step < self.total_steps

    def planned_epochs(self) -> int:
        return self.epochs

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch's steps, then the monitor's accuracy and the time-budget re-planning."""
        tc, o, device, workers, batch_size = self.tc, self.opts, self.device, self.workers, self.batch_size
        whiten_bias, lr = self.whiten_bias, self.lr
        self.model.train()
        train_bias = epoch < o.whiten_bias_epochs
        whiten_bias.requires_grad_(train_bias)  # frozen, the first conv needs no input gradient
        params = [p for p in self.all_params if train_bias or p is not whiten_bias]
        perm = self.balance.order(self.n, self.gen)  # a permutation, or class-balanced draws (train.class_balance)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        t0 = last_beat = time.perf_counter()
        done = 0  # steps of this epoch
        for i in range(self.steps_per_epoch):
            if self.step >= self.total_steps:
                break  # the budget ends inside this epoch
            if i % 25 == 0 and not o.workers and device.type == "cpu":
                # another process may have started or ended on these cores: use this one's share
                workers.active = min(workers.n, share_now() or workers.n)
            idx = ddp.batch_shard(perm[i * batch_size : (i + 1) * batch_size])  # DDP: this rank's part
            xb = self.x_all[idx.to(self.x_all.device)].to(device, non_blocking=True)
            yb = self.y_all[idx.to(self.y_all.device)]
            if tc.augment.crop_padding:
                xb = random_crop(xb, tc.augment.crop_padding, self.gen)
            if tc.augment.flip:
                xb = alternating_flip(xb, idx, self.first_flips, epoch)
            if tc.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            factor = lr_factor(tc.schedule, self.step, self.total_steps, self.steps_per_epoch, lr)
            for opt in self.optimizers:
                for g in opt.param_groups:
                    g["lr"] = g["initial_lr"] * factor
            batch_loss, batch_correct, ok = self.train_step(xb, yb, params)
            if not train_bias:
                whiten_bias.grad = None
            if not ok:
                continue  # fp16 overflow: this step is skipped with a smaller loss scale
            # DDP: the worker threads compute gradients with torch.autograd.grad, which DDP's hooks
            # never see, so the summed gradients are averaged over the ranks here, before the step.
            ddp.average_gradients(params)
            for opt in self.optimizers:
                opt.step()
            self.step += 1
            done += 1
            if not torch.isfinite(batch_loss):
                raise TrainingError(f"the loss became {float(batch_loss)} at epoch {epoch + 1}, step {i + 1}; "
                                    f"training stopped (try a lower learning rate than {lr:g})")
            loss_sum += batch_loss
            correct += batch_correct
            if self.slow is not None and (self.step % self.la_every == 0 or self.step == self.total_steps):
                # The slow weights' share ramps up as (progress)^3: no averaging while the learning
                # rate is high, decay**k of the slow weights at the end (a lagging average early on
                # only slows training down; late, it averages out the noise of the last steps).
                lookahead_average(self.slow, self.averaged,
                         o.lookahead_decay ** self.la_every * (self.step / self.total_steps) ** 3)
                self.averaged_at = self.step
            now = time.perf_counter()
            if o.heartbeat_seconds and now - last_beat >= o.heartbeat_seconds and i + 1 < self.steps_per_epoch:
                last_beat = now
                rate = (i + 1) * batch_size / (now - t0)
                left = (self.total_steps - self.step) * batch_size / rate
                self.log(f"  epoch {epoch + 1}/{self.epochs}: step {i + 1}/{self.steps_per_epoch}, {rate:.0f} img/s, "
                         f"about {left / 60:.1f} min of training left")
        seconds = time.perf_counter() - t0
        self.train_seconds += seconds
        seen = max(1, done) * batch_size
        loss_total, correct_total = ddp.reduce_sums(loss_sum, correct)  # DDP: over all ranks
        logs: dict[str, float] = {"loss": loss_total / seen, "accuracy": correct_total / seen,
                                  "lr": self.optimizers[0].param_groups[0]["lr"], "seconds": seconds,
                                  "train_seconds_total": self.train_seconds, "images_per_second": seen / seconds,
                                  "steps": done, "gflops_per_second": self.flops_per_image * seen / seconds / 1e9}
        ddp.broadcast_module(self.model)  # DDP: rank 0's BatchNorm statistics (kept per rank) on every rank
        if self.monitor is not None:
            # DDP: each rank scores its strided part of the watched split; the sums are reduced
            logs[f"{self.monitor_name}_loss"], logs[f"{self.monitor_name}_accuracy"] = ddp.sharded_eval(
                lambda xs: predict_parallel(self.model, xs, workers, tta=o.monitor_tta, device=device,
                                            dtype=self.dtype, batch_size=tc.eval_batch_size),
                self.monitor.x, self.monitor.y)
        if self.train_deadline is not None:
            self._replan(logs)
        return logs

    def _replan(self, logs: dict[str, float]) -> None:
        """The time budget: the steps that fit before the training deadline at this machine's speed.

        It re-plans its length rather than stopping at an epoch boundary (the core's TimeBudget, as
        the standard recipe does): the learning rate and the lookahead averaging are functions of
        step / total_steps, so a run cut after an epoch would end mid-schedule at a high learning
        rate; the schedule is re-planned for the steps that fit (the last epoch may be partial). The
        deadline: the caller's (``self.bound``, the one the core's rule reads) or this recipe's own
        limit when earlier. The last two epochs' speed counts (one slow epoch, e.g. another job on
        the cores, is not the machine's speed); a planned run may grow again, up to the planner's cap."""
        assert self.trainer is not None and self.train_deadline is not None
        spe = self.steps_per_epoch
        recent = [*self.trainer.history[-1:], logs]
        per_step = sum(h["seconds"] for h in recent) / max(1, sum(h["steps"] for h in recent))
        fits = self.step + int(max(0.0, self.train_deadline - time.monotonic()) // per_step)
        cap = self.max_steps if self.plan is not None else self.total_steps  # a fixed-size run only shrinks
        new = max(self.step, min(fits, cap))
        if new < self.total_steps or new > self.total_steps * 1.02:  # re-plan for a real change only
            self.log(f"time budget: {new / spe:.2f} epochs fit at this speed "
                     f"(planned {self.total_steps / spe:.2f}); training {new} steps")
            self.total_steps = new
        self.epochs = -(-self.total_steps // spe)
        # DDP: rank 0's clock decides
        self.total_steps, self.epochs = ddp.broadcast_object((self.total_steps, self.epochs))

    # ------------------------------------------------------------------------- the resumable state

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Everything an epoch boundary holds besides the weights, the optimisers and the callbacks
        (the core saves those): the generator, the flips, the slow weights, the (re-planned) length."""
        tensors = {"generator": self.gen.get_state(), "first_flips": self.first_flips.to(torch.uint8)}
        tensors.update({f"slow.{i}": t for i, t in enumerate(self.slow or [])})
        return {"step": self.step, "epochs": self.epochs, "total_steps": self.total_steps,
                "train_seconds": self.train_seconds, "loss_scale": self.train_step.loss_scale}, tensors

    def load_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.step, self.epochs, self.total_steps = meta["step"], meta["epochs"], meta["total_steps"]
        self.train_seconds = meta["train_seconds"]
        self.train_step.loss_scale, self.averaged_at = meta["loss_scale"], meta["step"]
        self.gen.set_state(tensors["generator"])
        self.first_flips = tensors["first_flips"].bool()
        if self.slow is not None:
            torch._foreach_copy_(self.slow, [tensors[f"slow.{i}"] for i in range(len(self.slow))])

    # ------------------------------------------------------------------------- the run

    def run(self, resume: bool, epoch_callback: EpochCallback | None) -> FitResult:
        """Train on the trainer core (resumed from the last finished epoch when asked), then :meth:`finish`."""
        tc, spe, plan = self.tc, self.steps_per_epoch, self.plan
        self.trainer = trainer = Trainer(
            self, self.run_dir, config_callbacks(tc, target_key=f"{self.monitor_name}_accuracy" if self.monitor_name
                                                 else "", epoch_callback=epoch_callback), log=self.log)
        resume = resume and ddp.from_main(lambda: (self.run_dir.state / STATE_META).is_file())  # DDP: rank 0's view
        if resume:
            trainer.resume()  # the same run goes on: weights, optimisers, the state above, the callbacks
        if resume or plan is None:  # a resumed run's budget counts what it trained before
            self.train_deadline, _ = fast_plan.deadlines(self.o, self.started_at, trained_seconds=self.train_seconds)
        if self.bound is not None:  # the caller's bound: the time-budget re-planning ends training by then
            self.train_deadline = self.bound if self.train_deadline is None else min(self.train_deadline, self.bound)
        train_budget_s = max(0.0, self.train_deadline - time.monotonic()) if self.train_deadline is not None else 0.0
        self.max_steps = max(self.total_steps, fast_plan.MAX_EPOCHS * spe) if plan is not None else self.total_steps
        self.log(f"fast recipe: {self.n:,} images, batch {self.batch_size}, {self.total_steps} steps "
                 f"({self.total_steps / spe:.2f} epochs of {spe}), "
                 f"{self.flops_per_image / 1e9:.3f} GFLOP per training image, {self.workers.n} worker(s), "
                 f"{self.precision.name} on {self.device.type}"
                 + (f", training budget {train_budget_s / 60:.1f} min" if train_budget_s else ""))
        setup_seconds = time.perf_counter() - self.t_setup  # planning, whitening, FLOP count, optimisers
        return self.finish(trainer.fit(), setup_seconds)

    def finish(self, result: FitResult, setup_seconds: float) -> FitResult:
        """The last average, the sanity checks and the recipe's figures in ``result.extra``."""
        es = self.trainer.find(EarlyStopping) if self.trainer is not None else None
        # the budget moved the end: one last average
        if self.slow is not None and self.averaged_at != self.step and not (es and es.restored):
            lookahead_average(self.slow, self.averaged, self.opts.lookahead_decay ** self.la_every)
        self.whiten_bias.requires_grad_(True)
        # training/sanity.py: finite weights, no one-class collapse (against the epoch whose weights the model holds)
        check_trained_model(self.model, self.train,
                            [h for h in result.history if h["epoch"] <= (result.weights_epoch or 0)], self.lr)
        images = self.step * self.batch_size
        flops = self.flops_per_image
        result.extra = {"recipe": "fast", "workers": self.workers.n, "train_gflop_per_image": flops / 1e9,
                        "train_gflops_per_second": flops * images / max(self.train_seconds, 1e-9) / 1e9,
                        "precision": self.precision.name, "monitor": self.monitor_name or None, "options": self.o,
                        "tta": self.tc.tta, "setup_seconds": setup_seconds}
        plan = self.plan
        if plan is not None:
            result.extra["plan"] = {"widths": plan.widths, "epochs": plan.epochs, "batch_size": plan.batch_size,
                                    "tta": plan.tta, "estimated_train_seconds": round(plan.estimated_train_seconds, 1),
                                    "probe_seconds": round(plan.probe_seconds, 1)}
        result.train_seconds = self.train_seconds
        return result
