"""Measuring this machine's speed for a candidate: a few timed steps or feature batches.

Each measurement builds the candidate's model, runs one warm-up and then timed work on real
training images, in the precision the candidate will train in (the one rule:
cnnlab.utils.hardware.choose_precision), with this process's share of the cores.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.config import ExperimentConfig
from cnnlab.evaluation.predict import as_nchw
from cnnlab.models.registry import create_model
from cnnlab.utils.hardware import autocast, default_device, resolve_precision

TRAIN_BATCH = 16  #: images per timed training step (pretrained candidates; the fast net: 64)
FEATURE_IMAGES = 8  #: images timed through a frozen base
#: widths the fast net is timed at (fast_plan.py then measures its own ladder within its run)
FASTNET_WIDTHS = [32, 128, 128]
#: the fast recipe's own step (a slice of the batch per core, each single-threaded) trains about this
#: many times faster than the plain step timed here: 1.6x, 2.3x and 3.2x in three auto-fits on the
#: shared 2-core Zen 3 (271 vs 173, 108 vs 47, 155 vs 48 img/s); a round figure below the median
FASTNET_RECIPE_FACTOR = 2.0


def measure(kind: str, cfg: ExperimentConfig, x: np.ndarray, y: np.ndarray, class_names: list[str]) -> float:
    """Images per second of ``kind``: training steps, or frozen-base features for ``frozen``."""
    from cnnlab.utils.cores import compute_threads

    device = default_device()
    dtype = resolve_precision(cfg.train.precision, device)
    mcfg = cfg.model
    if kind == "fastnet":
        import copy

        mcfg = copy.deepcopy(cfg.model)
        mcfg.kwargs = {**mcfg.kwargs, "widths": FASTNET_WIDTHS}
    with compute_threads():
        model = create_model(mcfg, class_names).to(device)
        if kind == "frozen":
            return _features_per_second(model, x, device, dtype)
        if cfg.model.unfreeze_last is not None:
            model.set_base_trainable(True, cfg.model.unfreeze_last)
        batch = 64 if kind == "fastnet" else TRAIN_BATCH
        ips = _train_per_second(model, x, y, batch, device, dtype, cfg.train.channels_last)
        return ips * FASTNET_RECIPE_FACTOR if kind == "fastnet" else ips


def _features_per_second(model: torch.nn.Module, x: np.ndarray, device: torch.device,
                         dtype: torch.dtype | None) -> float:
    from cnnlab.training.features import extract_features

    extract_features(model, x[:2], device=device, dtype=dtype, compile=False, progress=False)  # warm-up
    n = min(FEATURE_IMAGES, len(x))
    t = time.perf_counter()
    extract_features(model, x[:n], device=device, dtype=dtype, compile=False, progress=False)
    return n / max(time.perf_counter() - t, 1e-6)


def _train_per_second(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, batch: int, device: torch.device,
                      dtype: torch.dtype | None, channels_last: bool) -> float:
    idx = np.arange(min(batch, len(x)))
    xb = as_nchw(x[idx]).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        xb = xb.contiguous(memory_format=torch.channels_last)
    yb = torch.from_numpy(np.asarray(y[idx], dtype=np.int64)).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-6)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss = F.cross_entropy(model(xb).float(), yb)
        loss.backward()
        opt.step()

    step()  # warm-up: allocations, oneDNN primitives
    t = time.perf_counter()
    for _ in range(2):
        step()
    return 2 * len(idx) / max(time.perf_counter() - t, 1e-6)
