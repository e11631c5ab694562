"""Faster CPU execution of the convolutions small-image CNNs are made of.

Measured on the 2-core Sapphire Rapids CI machine (benchmarks/train_speed.py, batch 128, MobileNet
at 32x32), oneDNN's convolution path is slow for two layer kinds that dominate such networks:

- 1x1 ("pointwise") convolutions. On channels-last memory a 1x1 convolution *is* a matrix
  product over the channel axis, ``(N*H*W, C_in) @ (C_in, C_out)``; run through ``F.linear``
  it reaches the GEMM kernels (AMX in bf16): forward+backward of MobileNet's 13 pointwise
  layers took 113 ms as convolutions vs 65 ms as fp32 matmuls and 21 ms as bf16 matmuls.
- depthwise convolutions in bf16: oneDNN's bf16 depthwise backward was ~5x slower than fp32
  (237 ms vs 46 ms for the same 13 layers), so under bf16 autocast they run in fp32.
- convolutions whose input is smaller than their kernel (a 3x3 convolution on a 1x1 or 2x2
  map, as at the end of a ResNet on 16-32 px images): oneDNN's bf16 weight gradient for these
  was sometimes NaN (e.g. Conv2d(192, 96, 3, stride 2, padding 1) on a (16, 192, 1, 1) input,
  7-13 times in 50 tries, torch 2.14.1), so they run in fp32 too; they cost almost nothing.

No library offers this swap, so it is written here. The swap keeps parameter names and shapes,
so state dicts and checkpoints are unchanged, and :func:`optimize_for_cpu` is exact in fp32
(tested against the original modules).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PointwiseConv2d(nn.Conv2d):
    """A 1x1, stride-1, ungrouped convolution computed as a matrix product on channels-last data."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C, H, W) with channels-last strides -> (N, H, W, C) is a free view.
        y = F.linear(x.permute(0, 2, 3, 1), self.weight.view(self.out_channels, self.in_channels), self.bias)
        return y.permute(0, 3, 1, 2)


class FP32DepthwiseConv2d(nn.Conv2d):
    """A depthwise convolution that stays in fp32 under autocast (its bf16 kernel is slow on CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled("cpu") and x.device.type == "cpu":
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


class GuardedConv2d(nn.Conv2d):
    """A convolution that runs in fp32 under CPU autocast when its input is smaller than its
    kernel (where oneDNN's bf16 weight gradient can be NaN), and as usual otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_autocast_enabled("cpu") and x.device.type == "cpu"
                and (x.shape[-2] < self.kernel_size[0] or x.shape[-1] < self.kernel_size[1])):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def _is_pointwise(m: nn.Conv2d) -> bool:
    return (m.kernel_size == (1, 1) and m.stride == (1, 1) and m.groups == 1 and m.dilation == (1, 1)
            and m.padding in ((0, 0), "valid") and m.padding_mode == "zeros")


def _is_depthwise(m: nn.Conv2d) -> bool:
    return m.groups > 1 and m.groups == m.in_channels


def optimize_for_cpu(model: nn.Module) -> dict[str, int]:
    """Swap, in place, the classes of plain Conv2d layers for the faster equivalents above.

    Only exact ``nn.Conv2d`` instances are touched (subclasses such as timm's same-padding
    convolutions keep their own forward). Returns how many layers of each kind were swapped.
    """
    counts = {"pointwise": 0, "depthwise": 0, "guarded": 0}
    for m in model.modules():
        if type(m) is nn.Conv2d:
            if _is_pointwise(m):
                m.__class__ = PointwiseConv2d
                counts["pointwise"] += 1
            elif _is_depthwise(m):
                m.__class__ = FP32DepthwiseConv2d
                counts["depthwise"] += 1
            elif m.kernel_size != (1, 1):
                m.__class__ = GuardedConv2d
                counts["guarded"] += 1
    return counts
