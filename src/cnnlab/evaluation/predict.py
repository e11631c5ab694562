"""Batched inference on in-memory uint8 images, with optional test-time augmentation.

The one place cnnlab turns pixels into logits outside the training step; evaluation,
validation during training, prediction and reports all call :func:`predict_logits`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.data.rows import is_disk_backed, read_all, release_pages, take_rows
from cnnlab.errors import ConfigError
from cnnlab.utils.hardware import autocast

#: Images per micro-batch of inference in fp32, and in reduced precision, where every micro-batch
#: (the last one padded) has exactly this many images (cnnlab.inference.model's docstring says
#: why). Padding costs a single-image request 8 images' compute in bf16
#: (benchmarks/inference_precision.py). Here, below both, so that the planners measure inference
#: at the micro-batch it will run at.
MICRO_BATCH = 32
MICRO_BATCH_REDUCED = 8


def micro_batch_for(dtype: torch.dtype | None) -> int:
    """The inference micro-batch at ``dtype`` (None: fp32)."""
    return MICRO_BATCH if dtype is None else MICRO_BATCH_REDUCED

TTA_MODES = ("none", "flip", "flip_translate")


class NCHWRows:
    """(N, 3, H, W) uint8 batches read on demand from pixels decoded to disk (data/rows.py).

    Stands in for the tensor :func:`as_nchw` gives for in-memory pixels, as far as the trainers
    and :func:`batched_inference` use it: ``len``, ``shape``, ``device``; a slice is another lazy
    view; an index (tensor or array) or ``.to(device)`` reads those rows into a tensor with
    ``pread`` (data/rows.py: never through the map), so resident memory does not grow with the
    data set; every ``RELEASE_EVERY`` reads, pages other code read through the map are dropped."""

    RELEASE_EVERY = 16

    def __init__(self, x: Any, _reads: list[int] | None = None):
        self.x = x
        self.device = torch.device("cpu")
        self.dtype = torch.uint8
        self.ndim = 4
        self._reads = _reads if _reads is not None else [0]

    @property
    def shape(self) -> torch.Size:
        n, h, w, c = self.x.shape
        return torch.Size((n, c, h, w))

    def __len__(self) -> int:
        return len(self.x)

    def _read(self, arr: np.ndarray) -> torch.Tensor:
        self._reads[0] += 1
        if self._reads[0] % self.RELEASE_EVERY == 0:
            release_pages(self.x)  # pages some other reader mapped (the batches themselves are pread)
        return torch.from_numpy(arr).permute(0, 3, 1, 2)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            return NCHWRows(self.x[key], self._reads)
        if torch.is_tensor(key):
            key = key.cpu().numpy()
        return self._read(take_rows(self.x, np.asarray(key)))

    def to(self, device: Any = None, non_blocking: bool = False) -> torch.Tensor:
        """These rows as a tensor on ``device`` (read into memory: for batches)."""
        t = self._read(read_all(self.x))
        return t.to(device, non_blocking=non_blocking) if device is not None else t


def fits_on_device(x: Any, device: torch.device) -> bool:
    """Whether a data set should move to ``device`` whole (the trainers' fast path): always for
    in-memory pixels; for pixels decoded to disk, when they take under half the free device memory."""
    if not isinstance(x, NCHWRows) or device.type == "cpu":
        return not isinstance(x, NCHWRows)
    try:
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
    except Exception:  # no memory query on this device: stream the batches
        return False
    return int(np.prod(x.shape)) < free // 2


def as_nchw(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 array -> (N, 3, H, W) tensor view with channels-last memory (no copy).

    Pixels decoded to disk (a memory map or a view of one) give an :class:`NCHWRows` instead."""
    if not torch.is_tensor(x) and not isinstance(x, NCHWRows) and getattr(x, "ndim", 0) == 4 and is_disk_backed(x):
        return NCHWRows(x)  # type: ignore[return-value]
    if isinstance(x, NCHWRows):
        return x  # type: ignore[return-value]
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if t.ndim == 4 and t.shape[-1] == 3 and t.shape[1] != 3:
        t = t.permute(0, 3, 1, 2)
    return t


def _translate(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift images by (dy, dx) pixels with reflect padding (airbench's TTA translation)."""
    p = max(abs(dy), abs(dx))
    padded = F.pad(x, (p, p, p, p), mode="reflect")
    h, w = x.shape[-2:]
    return padded[..., p + dy : p + dy + h, p + dx : p + dx + w]


def _tta_views(x: torch.Tensor, mode: str) -> list[tuple[torch.Tensor, float]]:
    if mode == "none":
        return [(x, 1.0)]
    if mode == "flip":
        return [(x, 0.5), (x.flip(3), 0.5)]
    if mode == "flip_translate":
        # The untranslated pair weighs as much as the four translated views together.
        views = [(x, 0.25), (x.flip(3), 0.25)]
        for dy, dx in ((-1, -1), (1, 1)):
            t = _translate(x, dy, dx)
            views += [(t, 0.125), (t.flip(3), 0.125)]
        return views
    raise ConfigError(f"tta must be one of {TTA_MODES}, got {mode!r}")


@torch.inference_mode()
def batched_inference(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int = 512,
    device: torch.device | None = None,
    channels_last: bool = True,
    progress: Callable[[int], object] | None = None,
) -> list[torch.Tensor]:
    """``fn(batch)`` over ``x`` in batches, with ``model`` in eval mode; float32 CPU outputs.

    Images (N, H, W, 3) or (N, 3, H, W) arrive as float batches on ``device`` (channels-last
    when asked); 2-D inputs (feature vectors) pass through as float batches. ``progress`` is
    called with each batch's size. The model's train/eval mode is restored afterwards.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    xs = as_nchw(x)
    out = []
    try:
        for i in range(0, xs.shape[0], batch_size):
            xb = xs[i : i + batch_size].to(device, non_blocking=True).float()
            if xb.ndim == 4 and channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            out.append(fn(xb).float().cpu())
            if progress is not None:
                progress(len(xb))
    finally:
        model.train(was_training)
    return out


def predict_logits(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 512,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    tta: str = "none",
    channels_last: bool = True,
) -> torch.Tensor:
    """Logits (float32, on the CPU) for uint8 images ``x`` of shape (N, H, W, 3) or (N, 3, H, W)."""
    device = device or next(model.parameters()).device

    def logits(xb: torch.Tensor) -> torch.Tensor:
        if xb.ndim != 4:  # feature vectors: no image views
            with autocast(device, dtype):
                return model(xb).float()
        acc = None
        for view, weight in _tta_views(xb, tta):
            with autocast(device, dtype):
                v = model(view).float()
            acc = v * weight if acc is None else acc + v * weight
        return acc

    out = batched_inference(model, x, logits, batch_size=batch_size, device=device, channels_last=channels_last)
    if not out:
        return torch.zeros(0, getattr(model, "spec").num_classes if hasattr(model, "spec") else 0)
    return torch.cat(out)
