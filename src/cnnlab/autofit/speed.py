"""Measuring this machine's speed for a candidate, with the code that will train it.

One measurement serves the plan and the run (issue 19, item 3):

- ``fastnet``: the fast recipe's own data-parallel step (fast_parts.TrainStep over its Workers)
  and its width ladder (fast_plan.make_plan, narrowest first, for the budget the net will get);
  the planner takes the speed of the width that ladder picks, and the measured (widths, batch)
  speeds are handed to the run (``speeds.json`` in its run directory: fast_plan reads them instead
  of timing the same steps again);
- ``frozen``: the frozen base's feature extraction (training.features.extract_features) at the
  batch and compile setting the run uses;
- ``finetune_last`` / ``finetune``: the standard recipe's own epoch (training.recipes.standard._Standard: its
  optimiser, augmentation, precision and memory format) at the candidate's resolution and batch,
  on :data:`FINETUNE_BATCHES` batches after one warm-up batch.

Every measurement runs in the precision the candidate trains in (the one rule:
cnnlab.utils.hardware.choose_precision), with this process's share of the cores.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.config import ExperimentConfig
from cnnlab.data.dataset import ImageArrays
from cnnlab.models.registry import create_model
from cnnlab.utils.hardware import default_device, resolve_precision

FEATURE_BATCH = 64  #: the batch extract_features uses (training.features), timed once after a warm-up
FEATURE_WARMUP = 4  #: images through the base before the timed batch (allocations, weights packing)
FINETUNE_BATCHES = 2  #: batches of the standard recipe's epoch timed after one warm-up batch
LADDER_DIVISOR = 3.0  #: the planner lets the fast net's ladder measure for a third of its probe share
FASTNET_SAMPLE = 256  #: images the fast net's steps are timed on (its probe batch is at most 128)


def measure(kind: str, cfg: ExperimentConfig, x: np.ndarray, y: np.ndarray, class_names: list[str],
            **fastnet: Any) -> float:
    """Images per second of ``kind``: training images/s, or frozen-base features/s for ``frozen``.
    ``fastnet``: use :func:`measure_fastnet` (it needs the budget the net will get)."""
    from cnnlab.utils.cores import compute_threads

    if kind == "fastnet":
        return measure_fastnet(cfg, x, y, class_names, **fastnet)[0]
    with compute_threads():
        device = default_device()
        model = create_model(cfg.model, class_names).to(device)
        if kind == "frozen":
            return _features_per_second(model, x, device, resolve_precision(cfg.train.precision, device), cfg)
        return _standard_epoch_per_second(cfg, model, x, y, class_names)


def _features_per_second(model: torch.nn.Module, x: np.ndarray, device: torch.device, dtype: torch.dtype | None,
                         cfg: ExperimentConfig) -> float:
    from cnnlab.training.features import extract_features
    from cnnlab.training.orchestrate import compile_features

    compile = compile_features(cfg)
    extract_features(model, x[:FEATURE_WARMUP], device=device, dtype=dtype, compile=compile, progress=False)
    n = min(FEATURE_BATCH, len(x))
    t = time.perf_counter()
    extract_features(model, x[:n], batch_size=FEATURE_BATCH, device=device, dtype=dtype, compile=compile,
                     progress=False)
    return n / max(time.perf_counter() - t, 1e-6)


def _standard_epoch_per_second(cfg: ExperimentConfig, model: torch.nn.Module, x: np.ndarray, y: np.ndarray,
                               class_names: list[str]) -> float:
    """The standard recipe's epoch (its step loop), on FINETUNE_BATCHES batches after a warm-up batch."""
    import copy

    from cnnlab.training.recipes.standard import _Standard

    cfg = copy.deepcopy(cfg)
    cfg.train.ema = None  # the weight average's update is a small part of a step; not built for the probe
    batch = cfg.train.batch_size
    if cfg.model.unfreeze_last is not None:
        model.set_base_trainable(True, cfg.model.unfreeze_last)
    warm = ImageArrays(x[:batch], y[:batch], class_names)
    n = min(len(x), batch * FINETUNE_BATCHES)
    timed = ImageArrays(x[:n], y[:n], class_names)
    _Standard(cfg, model, warm, None, False).train_epoch(0)
    recipe = _Standard(cfg, model, timed, None, False)
    t = time.perf_counter()
    recipe.train_epoch(0)
    return n / max(time.perf_counter() - t, 1e-6)


class FastLadder:
    """The fast net's measured width ladder: ``ladder(seconds)`` -> (images/s, stem width) of the
    net the fast recipe's planner picks for ``seconds`` of training (fast_plan.make_plan on the
    measured speeds; widths not measured are estimated from the best measured FLOP rate)."""

    def __init__(self, cfg: ExperimentConfig, class_names: list[str], shape: tuple[int, ...], n_train: int,
                 n_eval: int, precision: str) -> None:
        self.cfg, self.class_names, self.shape = cfg, class_names, shape
        self.n_train, self.n_eval, self.precision = n_train, n_eval, precision
        self.speeds: dict[tuple[tuple[int, int, int], int], float] = {}
        self._flops: dict[tuple[int, int, int], float] = {}
        self.images_per_second = 0.0  #: for the budget it was measured for

    @property
    def measured(self) -> list[dict[str, Any]]:
        """The measured (widths, batch) speeds, as fast_plan.MEASURED stores them."""
        return [{"widths": list(w), "batch": b, "images_per_second": v} for (w, b), v in self.speeds.items()]

    def flops_of(self, widths: tuple[int, int, int]) -> float:
        from cnnlab.training.recipes import fast_plan
        from cnnlab.training.recipes.fast_parts import training_flops_per_image

        if widths not in self._flops:
            m = create_model(fast_plan.with_widths(self.cfg.model, widths), self.class_names)
            params = [p for p in m.parameters() if p.requires_grad]
            self._flops[widths] = training_flops_per_image(
                m, lambda z: F.cross_entropy(z.float(), torch.zeros(len(z), dtype=torch.long)), self.shape, params)
        return self._flops[widths]

    def plan(self, seconds: float, measure: Any = None, probe_total: float = 1e-9) -> Any:
        from cnnlab.training.recipes import fast_plan

        def known(widths: tuple[int, int, int], batch: int) -> float:
            return self.speeds[widths, batch]

        return fast_plan.make_plan(self.cfg, self.n_train, self.n_eval, max(1.0, seconds), probe_total,
                                   measure or known, self.flops_of, self.precision, known=dict(self.speeds))

    def __call__(self, seconds: float) -> tuple[float, int | None]:
        from cnnlab.autofit.planner import FASTNET_OVERHEAD

        if not self.speeds:
            return self.images_per_second, None
        p = self.plan(seconds * (1 - FASTNET_OVERHEAD))
        return p.images_per_second, int(p.widths[0])


def measure_fastnet(cfg: ExperimentConfig, x: np.ndarray, y: np.ndarray, class_names: list[str], *,
                    budget_seconds: float, n_train: int, n_eval: int) -> FastLadder:
    """The fast recipe's width ladder measured with its own step, workers and planner, for the net
    it picks for ``budget_seconds`` (``.images_per_second``) and any other budget (``ladder(s)``)."""
    from cnnlab.evaluation.predict import as_nchw
    from cnnlab.training.recipes import fast_plan
    from cnnlab.training.recipes.fast_options import options
    from cnnlab.training.recipes.fast_parts import TrainStep, Workers, heap_for_large_tensors
    from cnnlab.utils.cores import compute_threads
    from cnnlab.utils.hardware import choose_precision

    device = default_device()
    precision = choose_precision(cfg.train.precision, device)
    o = options(cfg.train.recipe_options)
    ladder = FastLadder(cfg, class_names, (x.shape[3], x.shape[1], x.shape[2]), n_train, n_eval, precision.name)
    # as fast.fit: one worker per core of the share, each single-threaded, large tensors from the heap
    with compute_threads() as share, heap_for_large_tensors():
        n_workers = 1 if device.type != "cpu" else (int(o["workers"]) or share.threads())
        workers = Workers(n_workers)
        before = torch.get_num_threads()
        torch.set_num_threads(1 if n_workers > 1 else before)
        try:
            xt, yt = as_nchw(x).to(device), torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)
            gen = torch.Generator().manual_seed(cfg.seed)

            def step_factory(m: torch.nn.Module) -> TrainStep:
                return TrainStep(m, workers, device, precision.dtype, cfg.train.label_smoothing)

            def measure_widths(widths: tuple[int, int, int], batch: int) -> float:
                if (widths, batch) not in ladder.speeds:
                    ladder.speeds[widths, batch] = fast_plan.measure_images_per_second(
                        cfg, widths, xt, yt, class_names, step_factory, batch, gen)
                return ladder.speeds[widths, batch]

            # the ladder's own probe cap is PROBE_SHARE of its "total": a third of the planner's share here
            # (its run measures the wider widths itself, if its cap allows)
            plan = ladder.plan(budget_seconds, measure_widths, budget_seconds / LADDER_DIVISOR)
        finally:
            workers.close()
            torch.set_num_threads(before)
    ladder.images_per_second = plan.images_per_second
    return ladder
