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

Reads top to bottom: :func:`fit` sets up the worker threads; ``_fit`` the data, the model, the
optimisers and the averaging, then ``train_epoch`` (one epoch's steps, the monitor's accuracy and
the time-budget re-planning) and the recipe's resumable state, run on the trainer core
(training/core.py), which owns the history, checkpoints, early stopping, target accuracy, the
caller's epoch callback and the resumable state. The options: fast_options.py.
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
from cnnlab.training.callbacks import EarlyStopping
from cnnlab.training.core import EpochCallback, EpochFunctions, FitResult, Trainer, config_callbacks
from cnnlab.training.recipes import fast_plan
from cnnlab.training.recipes.fast_options import IGNORED_KEYS, OPTIONS, check_config, options
from cnnlab.training.recipes.fast_parts import (TrainStep, Workers, alternating_flip, heap_for_large_tensors,
                                                param_groups, predict_parallel, training_flops_per_image)
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
    deadline: float | None = None,
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
                return _fit(cfg, model, train, val, test, run_dir, o, device, precision, workers, progress,
                            epoch_callback, log, started_at, resume, deadline)
        finally:
            workers.close()
            set_thread_updates_bn_stats(True)


def _fit(cfg: ExperimentConfig, model: ImageClassifier, train: ImageArrays, val: ImageArrays | None,
         test: ImageArrays | None, run_dir: RunDir, o: dict[str, Any], device: torch.device,
         precision: Any, workers: Workers, progress: bool, epoch_callback: EpochCallback | None,
         log: Callable[[str], None], started_at: float, resume: bool, deadline: float | None = None
         ) -> FitResult:
    t_setup = time.perf_counter()
    eval_split = test if test is not None else val
    # DDP: rank 0 alone plans (it measures, writes plan.json); every rank trains rank 0's plan, and
    # rank 0's clock is the one the time budget is checked against (its decisions are broadcast).
    cfg, model, plan, train_deadline = ddp.from_main(lambda: fast_plan.plan_run(
        cfg, model, train, len(eval_split) if eval_split is not None else 0, o, device, precision, workers,
        started_at, run_dir, log, resume))
    dtype = precision.dtype
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
        # pixels decoded to disk too large for the device stay there, read batch by batch (NCHWRows)
        x_all = x_all.to(device) if fits_on_device(x_all, device) else x_all
        y_all = y_all.to(device)
    n = len(y_all)
    batch_size = min(tc.batch_size, n)
    if ddp.current().enabled:  # DDP: the global batch, split evenly over the ranks
        ddp.per_rank_batch(batch_size, "train.batch_size (or the planned batch)")
        ddp.check_supported(tc.distributed.sync_batchnorm, device, "fast")
        if dtype == torch.float16:
            raise TrainingError("the fast recipe under torchrun trains in fp32 or bf16, not fp16 "
                                "(set train.precision)")
        log(ddp.describe(batch_size))
    steps_per_epoch = max(1, n // batch_size)  # the last, partial batch is dropped
    epochs = tc.epochs  # re-planned after each epoch when a time budget is set; the last may be partial
    total_steps = plan.total_steps if plan is not None else steps_per_epoch * epochs
    first_flips = torch.rand(n, generator=gen) < 0.5

    # -- model: whitening from the data, memory format, trainable parameters
    model.to(device)
    if tc.channels_last:
        model.to(memory_format=torch.channels_last)
    pick = torch.randperm(n, generator=gen)[: int(o["whiten_samples"])]
    init_whitening(model, x_all[pick.to(x_all.device)], eps=o["whiten_eps"])
    ddp.broadcast_module(model)  # DDP: every rank starts from rank 0's weights
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
        # Muon's orthogonalisation in bf16 only where the precision rule trains in bf16.
        opts.append(Muon(filters, lr=o["muon_lr"], momentum=o["muon_momentum"], nesterov=True,
                         parallel_map=workers.map, chunks=workers.n,
                         ns_dtype=torch.bfloat16 if dtype == torch.bfloat16 else torch.float32))
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

    balance = class_balance.from_config(tc, train.y, list(train.class_names)).to(device)
    if balance.mode != "none":
        log(balance.describe())
    train_step = TrainStep(step_model, workers, device, dtype, label_smoothing, balance)
    step, train_seconds = 0, 0.0
    beat = o["heartbeat_seconds"]
    averaged_at = 0

    def train_epoch(epoch: int) -> dict[str, float]:
        """One epoch's steps, then the monitor's accuracy and the time-budget re-planning."""
        nonlocal step, train_seconds, total_steps, epochs, averaged_at
        model.train()
        train_bias = epoch < o["whiten_bias_epochs"]
        whiten_bias.requires_grad_(train_bias)  # frozen, the first conv needs no input gradient
        params = [p for p in all_params if train_bias or p is not whiten_bias]
        perm = balance.order(n, gen)  # a permutation, or class-balanced draws (train.class_balance)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        t0 = last_beat = time.perf_counter()
        done = 0  # steps of this epoch
        for i in range(steps_per_epoch):
            if step >= total_steps:
                break  # the budget ends inside this epoch
            if i % 25 == 0 and not o["workers"] and device.type == "cpu":
                # another process may have started or ended on these cores: use this one's share
                workers.active = min(workers.n, share_now() or workers.n)
            idx = ddp.batch_shard(perm[i * batch_size : (i + 1) * batch_size])  # DDP: this rank's part
            xb = x_all[idx.to(x_all.device)].to(device, non_blocking=True)
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
            batch_loss, batch_correct, ok = train_step(xb, yb, params)
            if not train_bias:
                whiten_bias.grad = None
            if not ok:
                continue  # fp16 overflow: this step is skipped with a smaller loss scale
            # DDP: the worker threads compute gradients with torch.autograd.grad, which DDP's hooks
            # never see, so the summed gradients are averaged over the ranks here, before the step.
            ddp.average_gradients(params)
            for opt in opts:
                opt.step()
            step += 1
            done += 1
            if not torch.isfinite(batch_loss):
                raise TrainingError(f"the loss became {float(batch_loss)} at epoch {epoch + 1}, step {i + 1}; "
                                    f"training stopped (try a lower learning rate than {lr:g})")
            loss_sum += batch_loss
            correct += batch_correct
            if slow is not None and (step % la_every == 0 or step == total_steps):
                # The slow weights' share ramps up as (progress)^3: no averaging while the learning
                # rate is high, decay**k of the slow weights at the end (a lagging average early on
                # only slows training down; late, it averages out the noise of the last steps).
                _average(slow, averaged, o["lookahead_decay"] ** la_every * (step / total_steps) ** 3)
                averaged_at = step
            now = time.perf_counter()
            if beat and now - last_beat >= beat and i + 1 < steps_per_epoch:
                last_beat = now
                rate = (i + 1) * batch_size / (now - t0)
                left = (total_steps - step) * batch_size / rate
                log(f"  epoch {epoch + 1}/{epochs}: step {i + 1}/{steps_per_epoch}, {rate:.0f} img/s, "
                    f"about {left / 60:.1f} min of training left")
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        seen = max(1, done) * batch_size
        loss_total, correct_total = ddp.reduce_sums(loss_sum, correct)  # DDP: over all ranks
        logs: dict[str, float] = {"loss": loss_total / seen, "accuracy": correct_total / seen,
                                  "lr": opts[0].param_groups[0]["lr"], "seconds": seconds,
                                  "train_seconds_total": train_seconds, "images_per_second": seen / seconds,
                                  "steps": done, "gflops_per_second": flops_per_image * seen / seconds / 1e9}
        ddp.broadcast_module(model)  # DDP: rank 0's BatchNorm statistics (kept per rank) on every rank
        if monitor is not None:
            # DDP: each rank scores its strided part of the watched split; the sums are reduced
            logs[f"{monitor_name}_loss"], logs[f"{monitor_name}_accuracy"] = ddp.sharded_eval(
                lambda xs: predict_parallel(model, xs, workers, tta=o["monitor_tta"], device=device, dtype=dtype,
                                            batch_size=tc.eval_batch_size), monitor.x, monitor.y)
        if train_deadline is not None:
            # The time budget: the last two epochs' speed says how many more steps fit (a single
            # slow epoch, e.g. another job on the cores, is not taken for the machine's speed); a
            # planned run may also grow again, up to the planner's cap, when the machine is fast
            # again. The schedule, a function of step / total_steps, is re-planned for that many.
            recent = [*trainer.history[-1:], logs]
            per_step = sum(h["seconds"] for h in recent) / max(1, sum(h["steps"] for h in recent))
            fits = step + int(max(0.0, train_deadline - time.monotonic()) // per_step)
            cap = max_steps if plan is not None else total_steps  # a fixed-size run only shrinks
            new = max(step, min(fits, cap))
            if new < total_steps or new > total_steps * 1.02:  # re-plan for a real change only
                log(f"time budget: {new / steps_per_epoch:.2f} epochs fit at this speed "
                    f"(planned {total_steps / steps_per_epoch:.2f}); training {new} steps")
                total_steps = new
            epochs = -(-total_steps // steps_per_epoch)
            total_steps, epochs = ddp.broadcast_object((total_steps, epochs))  # DDP: rank 0's clock decides
        return logs

    def state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        # Everything an epoch boundary holds besides the weights, the optimisers and the callbacks
        # (the core saves those): the generator, the flips, the slow weights, the (re-planned) length.
        tensors = {"generator": gen.get_state(), "first_flips": first_flips.to(torch.uint8)}
        tensors.update({f"slow.{i}": t for i, t in enumerate(slow or [])})
        return {"step": step, "epochs": epochs, "total_steps": total_steps, "train_seconds": train_seconds,
                "loss_scale": train_step.loss_scale}, tensors

    def load(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        nonlocal step, epochs, total_steps, train_seconds, first_flips, averaged_at
        step, epochs, total_steps, train_seconds = meta["step"], meta["epochs"], meta["total_steps"], meta["train_seconds"]
        train_step.loss_scale, averaged_at = meta["loss_scale"], meta["step"]
        gen.set_state(tensors["generator"])
        first_flips = tensors["first_flips"].bool()
        if slow is not None:
            torch._foreach_copy_(slow, [tensors[f"slow.{i}"] for i in range(len(slow))])

    trainer = Trainer(
        EpochFunctions(model, opts, more=lambda epoch: step < total_steps, planned_epochs=lambda: epochs,
                       train_epoch=train_epoch, state=state, load_state=load),
        run_dir, config_callbacks(tc, target_key=f"{monitor_name}_accuracy" if monitor_name else "",
                                  epoch_callback=epoch_callback), log=log)
    resume = resume and ddp.from_main(lambda: (run_dir.state / STATE_META).is_file())  # DDP: rank 0's view
    if resume:
        trainer.resume()  # the same run goes on: weights, optimisers, the state above, the callbacks
    if resume or plan is None:  # a resumed run's budget counts what it trained before
        train_deadline, _ = fast_plan.deadlines(o, started_at, trained_seconds=train_seconds)
    if deadline is not None:  # the caller's bound: the time-budget re-planning ends training by then
        train_deadline = deadline if train_deadline is None else min(train_deadline, deadline)
    train_budget_s = max(0.0, train_deadline - time.monotonic()) if train_deadline is not None else 0.0
    max_steps = max(total_steps, fast_plan.MAX_EPOCHS * steps_per_epoch) if plan is not None else total_steps
    log(f"fast recipe: {n:,} images, batch {batch_size}, {total_steps} steps ({total_steps / steps_per_epoch:.2f} "
        f"epochs of {steps_per_epoch}), "
        f"{flops_per_image / 1e9:.3f} GFLOP per training image, {workers.n} worker(s), "
        f"{precision.name} on {device.type}"
        + (f", training budget {train_budget_s / 60:.1f} min" if train_budget_s else ""))
    setup_seconds = time.perf_counter() - t_setup  # planning, whitening, FLOP count, optimisers
    result = trainer.fit()

    es = trainer.find(EarlyStopping)
    if slow is not None and averaged_at != step and not (es and es.restored):  # the budget moved the end
        _average(slow, averaged, o["lookahead_decay"] ** la_every)
    whiten_bias.requires_grad_(True)
    # training/sanity.py: finite weights, no one-class collapse (against the epoch whose weights the model holds)
    check_trained_model(model, train, [h for h in result.history if h["epoch"] <= (result.weights_epoch or 0)], lr)
    images = step * batch_size
    result.extra = {"recipe": "fast", "workers": workers.n, "train_gflop_per_image": flops_per_image / 1e9,
                    "train_gflops_per_second": flops_per_image * images / max(train_seconds, 1e-9) / 1e9,
                    "precision": precision.name, "monitor": monitor_name or None, "options": o, "tta": tc.tta,
                    "setup_seconds": setup_seconds}
    if plan is not None:
        result.extra["plan"] = {"widths": plan.widths, "epochs": plan.epochs, "batch_size": plan.batch_size,
                                "tta": plan.tta, "estimated_train_seconds": round(plan.estimated_train_seconds, 1),
                                "probe_seconds": round(plan.probe_seconds, 1)}
    result.train_seconds = train_seconds
    return result


def _average(slow: list[torch.Tensor], averaged: list[torch.Tensor], keep: float) -> None:
    """Lookahead: the slow weights keep ``keep`` of themselves, and the fast weights restart from them."""
    with torch.no_grad():
        torch._foreach_lerp_(slow, [t.detach() for t in averaged], 1.0 - keep)
        torch._foreach_copy_([t.detach() for t in averaged], slow)

