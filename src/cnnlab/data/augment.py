"""Batched augmentation of uint8 image batches already in memory, with no per-image Python loop.

Each function takes an ``(N, C, H, W)`` tensor (uint8 or float) and a ``torch.Generator`` and
works on the whole batch with indexing and masks, so it costs a few tensor ops per batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip a random half of the batch left-right."""
    mask = torch.rand(x.shape[0], generator=gen, device=gen.device) < 0.5
    mask = mask.to(x.device).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(3), x)


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Reflect-pad by ``padding`` and crop a random ``H x W`` window from each image."""
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x if x.is_floating_point() else x.float(), (padding,) * 4, mode="reflect")
    padded = padded.to(x.dtype)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=gen, device=gen.device).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=gen, device=gen.device).to(x.device)
    # Two gathers (rows, then columns) crop every image at its own offset without a loop.
    rows = (dy.view(n, 1, 1, 1) + torch.arange(h, device=x.device).view(1, 1, h, 1))
    out = torch.gather(padded, 2, rows.expand(n, c, h, padded.shape[3]))
    cols = (dx.view(n, 1, 1, 1) + torch.arange(w, device=x.device).view(1, 1, 1, w))
    return torch.gather(out, 3, cols.expand(n, c, h, w))


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Zero a random ``size x size`` square (clipped at the borders) in each image."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    # The square's centre is uniform over the image; its top-left corner may fall outside.
    y0 = torch.randint(0, h, (n,), generator=gen, device=gen.device).to(x.device).view(n, 1, 1) - size // 2
    x0 = torch.randint(0, w, (n,), generator=gen, device=gen.device).to(x.device).view(n, 1, 1) - size // 2
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= y0) & (ys < y0 + size) & (xs >= x0) & (xs < x0 + size)
    return x.masked_fill(inside.unsqueeze(1), 0)


def augment_batch(
    x: torch.Tensor, gen: torch.Generator, *, crop_padding: int = 0, flip: bool = False, cutout_size: int = 0
) -> torch.Tensor:
    if crop_padding:
        x = random_crop(x, crop_padding, gen)
    if flip:
        x = random_flip(x, gen)
    if cutout_size:
        x = cutout(x, cutout_size, gen)
    return x
