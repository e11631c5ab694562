"""Sizing the fast recipe for the machine it runs on and the time it is given.

The same recipe is 3-40x faster or slower from one CPU to the next (bf16 with AMX, AVX512-BF16,
or fp32 on an AVX2-only CPU; 2 cores or 32). A fixed width and epoch count therefore either
wastes a budget or overruns it. With ``recipe_options.size: auto`` and a budget
(``time_limit_minutes`` for the whole run, or ``max_train_minutes`` for training alone), the
planner measures, in the first seconds, how fast this machine trains each width of
:data:`WIDTH_LADDER` (one warm-up and two timed steps each, narrowest first, stopping once a
width cannot reach :data:`TARGET_EPOCHS`), and picks:

- the widest net that trains at least ``TARGET_EPOCHS`` epochs in the budget (the schedule and
  the lookahead averaging were tuned at 8 epochs: presets/fast.yaml), with as many epochs as fit,
  up to :data:`MAX_EPOCHS`; if even the narrowest cannot, the narrowest for as many epochs as fit;
- the batch size: the config's, halved (with the SGD learning rate, the linear scaling rule)
  while an epoch would have fewer than :data:`MIN_STEPS_PER_EPOCH` steps (small data sets);
- the test-time augmentation: the most views (flip_translate 6, flip 2, none 1) whose final
  evaluation is estimated to take at most :data:`EVAL_SHARE` of the budget.

The training loop then re-checks the plan against the clock after every epoch (fewer epochs if
the machine became slower, e.g. another job took a core). The plan is written to the run
directory as plan.json: candidates, measured speeds, the choice and why.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.config import ExperimentConfig
from cnnlab.data.augment import random_crop
from cnnlab.evaluation.predict import as_nchw, micro_batch_for, predict_logits
from cnnlab.models.fastnet import init_whitening
from cnnlab.models.registry import create_model
from cnnlab.training.recipes.fast_parts import TrainStep, training_flops_per_image
from cnnlab.utils.cores import scoped_threads
from cnnlab.utils.io import atomic_write_text

#: Widths (stem, block 2, block 3) tried, narrowest first; [64, 256, 256] is the published net's.
WIDTH_LADDER: tuple[tuple[int, int, int], ...] = (
    (24, 96, 96), (32, 128, 128), (48, 192, 192), (64, 256, 256), (96, 384, 384), (128, 512, 512))
TARGET_EPOCHS = 8  #: the epochs the schedule was tuned for: the widest net that gets them wins
MAX_EPOCHS = 16  #: more epochs than this buy little at a fixed width; a wider net is better then
MIN_STEPS_PER_EPOCH = 16  #: below this many steps an epoch, the batch is halved
MIN_BATCH = 64
EVAL_SHARE = 0.05  #: the final evaluation (with its TTA views) may take this share of the budget
PROBE_SHARE = 0.05  #: measuring the candidates may take at most this share of the budget
PROBE_BATCH = 128
PROBE_ROWS = 2048  #: training rows sampled for the probes (warm-up, timed steps, inference)
TTA_VIEWS = {"flip_translate": 6, "flip": 2, "none": 1}
#: Inference images/s per training images/s when inference is not measured. Measured on a quiet
#: Zen 4 in bf16 at the 8-image inference micro-batch: about 1.2-1.7 (small micro-batches keep
#: inference far from the 3x that its FLOPs would allow), so the planner measures it instead.
INFER_FACTOR = 1.5


@dataclass
class Candidate:
    widths: tuple[int, int, int]
    images_per_second: float | None = None  # measured (None: estimated from the FLOP rate)
    estimated_images_per_second: float = 0.0
    epochs_fit: float = 0.0


@dataclass
class FastPlan:
    widths: list[int]
    epochs: int  # the last may be partial: total_steps says where training ends
    total_steps: int
    steps_per_epoch: int
    batch_size: int
    lr_scale: float
    tta: str
    train_budget_seconds: float
    estimated_train_seconds: float
    estimated_eval_seconds: float
    images_per_second: float
    precision: str
    reason: str
    probe_seconds: float
    candidates: list[dict[str, Any]] = field(default_factory=list)
    #: the picked net's inference speed (images x TTA views / s), measured at the inference micro-batch
    #: (None: estimated as INFER_FACTOR x the training speed)
    inference_images_per_second: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (f"plan: width {self.widths}, {self.total_steps} steps of batch {self.batch_size} "
                f"({self.total_steps / self.steps_per_epoch:.2f} epochs), TTA {self.tta}; "
                f"about {self.estimated_train_seconds / 60:.1f} min of training at {self.images_per_second:.0f} "
                f"img/s + {self.estimated_eval_seconds / 60:.1f} min of evaluation, in {self.precision} "
                f"({self.reason})")


def planned_batch(batch_size: int, n: int) -> int:
    """The config's batch, halved while an epoch of ``n`` images would have too few steps."""
    b = min(batch_size, max(1, n))
    while b > MIN_BATCH and n // b < MIN_STEPS_PER_EPOCH:
        b //= 2
    return b


def with_widths(model_cfg: Any, widths: tuple[int, int, int] | list[int]) -> Any:
    """A copy of a model config with the fast net's ``widths``."""
    c = copy.deepcopy(model_cfg)
    c.kwargs = {**c.kwargs, "widths": list(widths)}
    return c


def measure_images_per_second(cfg: ExperimentConfig, widths: tuple[int, int, int], x: torch.Tensor,
                              y: torch.Tensor, class_names: list[str], step_factory: Callable[..., Any],
                              batch: int, gen: torch.Generator) -> float:
    """Training images/s of the fast net at ``widths``: one warm-up step, then two timed ones,
    through the recipe's own data-parallel step (``step_factory(model) -> step``)."""
    model = create_model(with_widths(cfg.model, widths), class_names).to(x.device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    idx = torch.randperm(len(x), generator=gen)[: max(batch, 2)]
    init_whitening(model, x[idx], eps=5e-4)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    step = step_factory(model)
    xb, yb = random_crop(x[idx[:batch]], 2, gen), y[idx[:batch]]
    if cfg.train.channels_last:
        xb = xb.contiguous(memory_format=torch.channels_last)
    step(xb, yb, params)  # warm-up: allocations, oneDNN primitive creation
    # the faster of two timed steps: a step is only ever slowed by what else happens (a second warm-up
    # effect, another process), and the mean of two steps under-predicted the run's speed by up to 1.4x
    # on a 3,000-image CIFAR-10 fit (480 measured, 670 img/s trained)
    seconds = []
    for _ in range(2):
        t = time.perf_counter()
        step(xb, yb, params)
        seconds.append(time.perf_counter() - t)
    return len(yb) / max(min(seconds), 1e-9)


def measure_inference_per_second(cfg: ExperimentConfig, widths: tuple[int, int, int], x: torch.Tensor,
                                 class_names: list[str], dtype: torch.dtype | None, threads: int) -> float:
    """Inference images/s of the fast net at ``widths`` as the evaluation after training runs it: whole
    model, eval mode, ``threads`` threads, micro-batches of :func:`micro_batch_for` ``dtype`` (two
    warm-up micro-batches, then at least 256 images timed: a 10-minute CIFAR-10 fit timed 4 bf16
    micro-batches at 900 img/s and then evaluated at 1,750)."""
    model = create_model(with_widths(cfg.model, widths), class_names).to(x.device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    mb = micro_batch_for(dtype)
    timed = x[: max(8 * mb, 256)]
    with scoped_threads(threads):
        predict_logits(model, timed[: 2 * mb], batch_size=mb, dtype=dtype)  # warm-up: oneDNN primitives
        t = time.perf_counter()
        predict_logits(model, timed, batch_size=mb, dtype=dtype)
        return len(timed) / max(time.perf_counter() - t, 1e-6)


def make_plan(cfg: ExperimentConfig, n_train: int, n_eval: int, train_budget_s: float, total_budget_s: float,
              measure: Callable[[tuple[int, int, int], int], float], flops_of: Callable[[tuple[int, int, int]], float],
              precision: str, known: dict[tuple[tuple[int, int, int], int], float] | None = None,
              measure_inference: Callable[[tuple[int, int, int]], float] | None = None,
              ladder: tuple[tuple[int, int, int], ...] = WIDTH_LADDER) -> FastPlan:
    """Choose widths, epochs, batch size and TTA views (see the module docstring).

    ``measure(widths, batch)`` -> training images/s; ``flops_of(widths)`` -> training FLOPs per image;
    ``known``: speeds measured before (the auto-fit planner's), used whatever the probe time left;
    ``measure_inference(widths)`` -> inference images/s of the picked net, as the final evaluation runs
    it (without it: :data:`INFER_FACTOR` x the training speed); ``ladder``: the widths to choose from
    (one width: the auto-fit planner's pick, sized here for epochs, batch and TTA only).
    """
    t0 = time.perf_counter()
    batch = planned_batch(cfg.train.batch_size, n_train)
    per_epoch = max(1, n_train // batch) * batch
    probe_cap = PROBE_SHARE * total_budget_s
    cands: list[Candidate] = []
    best_rate = 0.0  # measured FLOP/s, to estimate widths not measured
    for widths in ladder:
        c = Candidate(widths)
        if (widths, min(PROBE_BATCH, batch)) in (known or {}) or time.perf_counter() - t0 < probe_cap:
            c.images_per_second = measure(widths, min(PROBE_BATCH, batch))
            c.estimated_images_per_second = c.images_per_second
            best_rate = max(best_rate, c.images_per_second * flops_of(widths))
        else:
            c.estimated_images_per_second = best_rate / flops_of(widths)
        c.epochs_fit = train_budget_s * c.estimated_images_per_second / per_epoch
        cands.append(c)
        if c.epochs_fit < TARGET_EPOCHS:
            break  # wider nets fit even fewer epochs
    good = [c for c in cands if c.epochs_fit >= TARGET_EPOCHS]
    if good:
        pick = good[-1]
        epochs_float = min(pick.epochs_fit, MAX_EPOCHS)
        reason = f"the widest net that trains >= {TARGET_EPOCHS} epochs in {train_budget_s / 60:.1f} min"
    else:
        pick = cands[0]
        epochs_float = pick.epochs_fit
        reason = f"even the narrowest net trains only {pick.epochs_fit:.2f} epochs in {train_budget_s / 60:.1f} min"
    if len(ladder) == 1:
        reason = f"the width the auto-fit planner chose from the same measurements ({train_budget_s / 60:.1f} min)"
    steps_per_epoch = per_epoch // batch
    total_steps = max(1, int(epochs_float * steps_per_epoch))
    ips = pick.estimated_images_per_second
    measured_infer = measure_inference(pick.widths) if measure_inference is not None else None
    infer_ips = measured_infer or INFER_FACTOR * ips
    tta = cfg.train.tta
    for mode in ("flip_translate", "flip", "none"):
        if TTA_VIEWS[mode] > TTA_VIEWS[cfg.train.tta]:
            continue  # never more views than the config asks for
        tta = mode
        if n_eval * TTA_VIEWS[mode] / infer_ips <= EVAL_SHARE * total_budget_s:
            break
    return FastPlan(
        widths=list(pick.widths), epochs=-(-total_steps // steps_per_epoch), total_steps=total_steps,
        steps_per_epoch=steps_per_epoch, batch_size=batch, lr_scale=batch / min(cfg.train.batch_size, max(1, n_train)),
        tta=tta, train_budget_seconds=train_budget_s, estimated_train_seconds=total_steps * batch / ips,
        estimated_eval_seconds=n_eval * TTA_VIEWS[tta] / infer_ips, images_per_second=ips, precision=precision,
        reason=reason, probe_seconds=time.perf_counter() - t0, candidates=[asdict(c) for c in cands],
        inference_images_per_second=measured_infer)


def apply_plan(cfg: ExperimentConfig, plan: FastPlan) -> ExperimentConfig:
    """A copy of ``cfg`` with the plan's widths, epochs, batch, learning rate and TTA."""
    out = copy.deepcopy(cfg)
    out.model = with_widths(cfg.model, plan.widths)
    out.train.epochs = plan.epochs
    out.train.batch_size = plan.batch_size
    out.train.optimizer.lr = cfg.train.optimizer.lr * plan.lr_scale
    out.train.tta = plan.tta  # type: ignore[assignment]
    return out


#: Kept free at the end of a whole-run budget beside the estimated evaluation: saving, figures.
END_MARGIN_SECONDS = 10.0


def deadlines(o: dict[str, Any], started_at: float, eval_seconds: float | None = None,
              trained_seconds: float = 0.0) -> tuple[float | None, float | None]:
    """(end of training, end of the whole run) as ``time.monotonic()`` values, None where unset.

    ``max_train_minutes`` counts training from now (less ``trained_seconds`` already done by a
    resumed run); ``time_limit_minutes`` counts the whole run from ``started_at``, and training
    ends early enough for the final evaluation (``eval_seconds``, default a tenth of what is
    left) and :data:`END_MARGIN_SECONDS`.
    """
    now = time.monotonic()
    total = started_at + 60 * o["time_limit_minutes"] if o["time_limit_minutes"] else None
    ends = []
    if o["max_train_minutes"]:
        ends.append(now + max(0.0, 60 * o["max_train_minutes"] - trained_seconds))
    if total is not None:
        reserve = 0.1 * max(0.0, total - now) if eval_seconds is None else eval_seconds
        ends.append(max(now, total - reserve - END_MARGIN_SECONDS))
    return (min(ends) if ends else None), total


MEASURED = "speeds.json"  #: (widths, batch) speeds measured before the run with this very step (cnnlab fit)


def measured_speeds(run_dir: Any) -> dict[tuple[tuple[int, int, int], int], float]:
    """The speeds the auto-fit planner measured for this run (autofit/speed.py), read from the run
    directory's speeds.json, so that one measurement serves the plan and the run; {} without one."""
    path = run_dir.path / MEASURED
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text(encoding="utf-8"))
    return {(tuple(r["widths"]), int(r["batch"])): float(r["images_per_second"]) for r in rows}  # type: ignore[misc]


def plan_run(cfg: ExperimentConfig, model: Any, train: Any, n_eval: int, o: dict[str, Any],
             device: torch.device, precision: Any, workers: Any, started_at: float, run_dir: Any,
             log: Callable[[str], None], resume: bool = False, bound: float | None = None
             ) -> tuple[ExperimentConfig, Any, FastPlan | None, float | None]:
    """With ``size: auto`` and a budget: measure, plan, write plan.json and the planned config.yaml,
    and return (planned config, a new model of the planned width, the plan, end of training).
    A resumed run reads its plan.json again (its config.yaml already is the planned one).
    ``bound``: the caller's end of training (``time.monotonic()``), which the plan also keeps."""
    saved = run_dir.path / "plan.json"
    if resume and saved.is_file():
        return cfg, model, FastPlan(**json.loads(saved.read_text())), None

    def earliest(end: float | None) -> float | None:
        return end if bound is None or end is None else min(end, bound)

    train_end, total_end = deadlines(o, started_at)
    train_end = earliest(train_end)
    if o["size"] != "auto" or train_end is None:
        return cfg, model, None, train_end
    # the probes need a few batches: a seeded sample of rows is read (pixels decoded to disk are
    # never read whole here)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(train.y)
    rows = torch.randperm(n, generator=gen)[:PROBE_ROWS].sort().values
    x = as_nchw(train.x)[rows]
    x = x.to(device) if torch.is_tensor(x) else x
    y = torch.from_numpy(np.asarray(train.y)[rows.numpy()]).to(device)
    dtype = precision.dtype
    speeds = measured_speeds(run_dir)

    def step_factory(m: torch.nn.Module) -> TrainStep:
        return TrainStep(m, workers, device, dtype, cfg.train.label_smoothing)

    def measure(widths: tuple[int, int, int], batch: int) -> float:
        if (widths, batch) not in speeds:
            speeds[widths, batch] = measure_images_per_second(cfg, widths, x, y, train.class_names, step_factory,
                                                              batch, gen)
        return speeds[widths, batch]

    inference: dict[tuple[int, int, int], float] = {}
    # the auto-fit planner's pick (recipe_options.widths): the net it predicted is the net that trains
    ladder = (tuple(o["widths"]),) if o.get("widths") else WIDTH_LADDER

    def measure_inference(widths: tuple[int, int, int]) -> float:
        # on the device's threads the evaluation after training will have (one per worker here)
        if widths not in inference:
            inference[widths] = measure_inference_per_second(cfg, widths, x, train.class_names, dtype, workers.n)
        return inference[widths]

    def flops_of(widths: tuple[int, int, int]) -> float:
        m = create_model(with_widths(cfg.model, widths), train.class_names)
        params = [p for p in m.parameters() if p.requires_grad]
        return training_flops_per_image(m, lambda z: F.cross_entropy(z.float(), torch.zeros(len(z), dtype=torch.long)),
                                        tuple(x.shape[1:]), params)

    def plan_for(end: float) -> FastPlan:
        now = time.monotonic()
        return make_plan(cfg, n, n_eval, max(1.0, end - now), max(1.0, (total_end or end) - now), measure,
                         flops_of, precision.name, known=dict(speeds), measure_inference=measure_inference,
                         ladder=ladder)

    plan = plan_for(train_end)
    if total_end is not None:
        # Again with this plan's own estimate of the final evaluation (the speeds are measured once).
        train_end, _ = deadlines(o, started_at, eval_seconds=plan.estimated_eval_seconds)
        train_end = earliest(train_end)
        plan = plan_for(train_end)
    log(plan.describe())
    atomic_write_text(run_dir.path / "plan.json", json.dumps(plan.to_dict(), indent=2))
    planned = apply_plan(cfg, plan)
    run_dir.write_config(planned)
    return planned, create_model(planned.model, train.class_names), plan, train_end
