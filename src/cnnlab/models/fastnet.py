"""A compact conv net for small images, built to train fast (the `fast` recipe's model).

The layout follows the published fast-CIFAR-10 nets (Page 2018, Jordan 2024): a frozen
patch-whitening first layer whose filters come from the eigenvectors of the training data's
pixel-patch covariance (:func:`init_whitening`), then ``len(widths)`` blocks of

    conv3x3 -> maxpool 2 -> BatchNorm -> act -> (conv3x3 -> BatchNorm -> act) x (depth - 1)

The published nets use GELU; ReLU is the default here: on this CPU GELU's forward and backward
cost 3x ReLU's (about 12% of a training step), and on a 5,000-image, 3-epoch probe the two
reached the same accuracy (69.5% vs 69.1%, one seed each).

with identity-initialised convolutions (the first ``min(c_in, c_out)`` filters pass their
input channel through) and BatchNorm layers with a fixed scale of 1, a learnt shift and a
fast-moving running average (few training steps). Global max pooling and the classifier are
cnnlab's shared :class:`~cnnlab.models.classifier.Head`.

CPU speed: oneDNN computes the weight gradient of a 3x3 convolution slowly when the feature
map is small (4x4 and below; measured 60-90 GFLOP/s on one Sapphire Rapids core at 3x3 and
256 channels vs 230+ as one matrix product), so :class:`FastConv2d` computes that gradient as
an im2col matrix product there. Forward and input gradient stay oneDNN's.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.errors import ModelError

#: Feature maps with at most this many pixels get the matrix-product weight gradient on CPU.
GEMM_WGRAD_MAX_PIXELS = 64

_local = threading.local()


def set_thread_updates_bn_stats(flag: bool) -> None:
    """Whether BatchNorm layers update their running statistics in the calling thread.

    The fast recipe trains with one worker thread per core, each on a slice of the batch; only
    one of them should move the shared running averages.
    """
    _local.update_stats = flag


def _im2col3x3(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) -> (N*H*W, 9*C) patches of a 3x3, padding-1 convolution (order kh, kw, c)."""
    n, h, w, c = x.shape
    windows = F.pad(x, (0, 0, 1, 1, 1, 1)).unfold(1, 3, 1).unfold(2, 3, 1)  # (N, H, W, C, 3, 3) view
    return windows.permute(0, 1, 2, 4, 5, 3).reshape(n * h * w, 9 * c)


class _Conv3x3GemmWgrad(torch.autograd.Function):
    """3x3 / stride 1 / padding 1 convolution whose weight gradient is one matrix product."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        return F.conv2d(x, w, padding=1)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, w = ctx.saved_tensors
        gx = gw = None
        gy = gy.contiguous(memory_format=torch.channels_last)
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(
                gy, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            xn = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)  # (N, H, W, C) view
            g2 = gy.permute(0, 2, 3, 1).reshape(-1, gy.shape[1])  # (N*H*W, O)
            gw = (g2.t() @ _im2col3x3(xn)).view(w.shape[0], 3, 3, w.shape[1]).permute(0, 3, 1, 2)
        return gx, gw


class FastConv2d(nn.Conv2d):
    """A 3x3, padding-1, bias-free convolution, identity-initialised (see the module docstring)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, padding=1, bias=False)
        with torch.no_grad():
            k = min(in_channels, out_channels)
            self.weight[:k].zero_()
            idx = torch.arange(k)
            self.weight[idx, idx, 1, 1] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and torch.is_grad_enabled() and self.weight.requires_grad
                and x.shape[-1] * x.shape[-2] <= GEMM_WGRAD_MAX_PIXELS):
            w = self.weight
            if torch.is_autocast_enabled("cpu"):
                dt = torch.get_autocast_dtype("cpu")
                x, w = x.to(dt), w.to(dt)
                with torch.autocast("cpu", enabled=False):
                    return _Conv3x3GemmWgrad.apply(x, w)
            return _Conv3x3GemmWgrad.apply(x, w.to(x.dtype))
        return super().forward(x)


class FastBatchNorm(nn.BatchNorm2d):
    """BatchNorm with a fixed scale of 1, a learnt shift and a fast running average."""

    def __init__(self, num_features: int, momentum: float = 0.4, eps: float = 1e-12):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not getattr(_local, "update_stats", True):
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(x)


ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}


class ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, depth: int, bn_momentum: float, activation: str = "relu"):
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.convs = nn.ModuleList([FastConv2d(c_in if i == 0 else c_out, c_out) for i in range(depth)])
        self.norms = nn.ModuleList([FastBatchNorm(c_out, bn_momentum) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = conv(x)
            if i == 0:
                x = F.max_pool2d(x, 2)
            x = self.act(norm(x))
        return x


class FastNet(nn.Module):
    """Whitening stem + conv blocks; ``forward_features`` returns (N, widths[-1], H/8, W/8) maps."""

    def __init__(self, widths: tuple[int, ...] | list[int] = (64, 256, 256), depth: int = 2,
                 whiten_kernel: int = 2, bn_momentum: float = 0.4, feature_scale: float = 1 / 9,
                 activation: str = "relu", drop_rate: float = 0.0):
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ModelError(f"fastnet widths must be positive integers, got {widths}")
        if depth < 1:
            raise ModelError(f"fastnet depth must be at least 1, got {depth}")
        if whiten_kernel < 1:
            raise ModelError(f"fastnet whiten_kernel must be at least 1, got {whiten_kernel}")
        if activation not in ACTIVATIONS:
            raise ModelError(f"fastnet activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.act = ACTIVATIONS[activation]
        self.whiten_kernel = whiten_kernel
        stem = 2 * 3 * whiten_kernel**2  # each eigen-filter and its negative
        self.whiten = nn.Conv2d(3, stem, whiten_kernel, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        chans = [stem] + widths
        self.blocks = nn.ModuleList([ConvBlock(chans[i], chans[i + 1], depth, bn_momentum, activation)
                                     for i in range(len(widths))])
        self.feature_scale = feature_scale
        self.drop_rate = drop_rate
        self.num_features = widths[-1]
        self.whitened = False  # set by init_whitening

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.whiten(x))
        for block in self.blocks:
            x = block(x)
        if self.drop_rate > 0:
            x = F.dropout(x, self.drop_rate, self.training)
        return x * self.feature_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


def _fastnet_of(model: nn.Module) -> tuple[FastNet, nn.Module | None]:
    """(the FastNet, the preprocessing module or None) for a FastNet or a classifier around one."""
    if isinstance(model, FastNet):
        return model, None
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, FastNet):
        return backbone, getattr(model, "preprocess", None)
    raise ModelError(f"init_whitening needs a fastnet model, got {type(model).__name__}")


#: Patch-covariance eigen-directions below this fraction of the largest eigenvalue carry no
#: signal (grey images: 3 identical channels leave 2/3 of the directions at ~1e-16 of the largest;
#: CIFAR-10's smallest real one is ~1e-5): their filters and biases are zero and stay zero.
WHITEN_REL_TOL = 1e-7


@torch.no_grad()
def init_whitening(model: nn.Module, x_uint8: torch.Tensor, eps: float = 5e-4,
                   rel_tol: float = WHITEN_REL_TOL) -> int:
    """Set the whitening layer from images: filters are the eigenvectors of the covariance of all
    ``k x k`` pixel patches, scaled by ``1 / sqrt(eigenvalue + eps)``, each paired with its negative.

    Directions whose eigenvalue is at most ``rel_tol`` times the largest (a rank-deficient
    covariance: grey images, where R = G = B) get a zero filter, a zero bias and a gradient hook
    that keeps that bias at zero. Such a channel responds to nothing, so its bias is a free
    constant: trained at the recipe's bias learning rate it drifted to +-3,800 in a 2-epoch run,
    the batch statistics of training-mode BatchNorm hid it, and in eval mode the running
    statistics (always a few steps behind) did not, so the saved model predicted one class.
    Returns the number of directions dropped.

    ``x_uint8``: (N, 3, H, W) or (N, H, W, 3) uint8 training images (a few thousand suffice).
    ``model``: a FastNet, or an ImageClassifier around one (its preprocessing is applied first).
    """
    net, pre = _fastnet_of(model)
    x = x_uint8
    if x.ndim != 4:
        raise ModelError(f"init_whitening needs a (N, 3, H, W) batch of images, got shape {tuple(x.shape)}")
    if x.shape[1] != 3 and x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    dev = net.whiten.weight.device
    x = x.to(dev)
    x = pre(x) if pre is not None else x.float() / 255.0
    x = x.float().contiguous()
    k = net.whiten_kernel
    patches = F.unfold(x, k).transpose(1, 2).reshape(-1, 3 * k * k).double()  # (N*L, 3kk), order c,kh,kw
    mean = patches.mean(0)
    centred = patches - mean
    cov = centred.t() @ centred / max(1, len(centred) - 1)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(0), evecs.flip(1)
    keep = evals > rel_tol * evals[0].clamp_min(0)
    if not bool(evals[0] > 0):
        keep = torch.zeros_like(keep)
    filters = (evecs / torch.sqrt(evals.clamp_min(0) + eps)).t() * keep.unsqueeze(1)  # one filter per row
    weight = torch.cat([filters, -filters]).view(-1, 3, k, k)
    bias = -(weight.view(weight.shape[0], -1) @ mean)
    net.whiten.weight.copy_(weight.to(net.whiten.weight.dtype))
    net.whiten.bias.copy_(bias.to(net.whiten.bias.dtype))
    old = getattr(net, "_whiten_bias_hook", None)
    if old is not None:
        old.remove()
        net._whiten_bias_hook = None
    if not bool(keep.all()):
        mask = torch.cat([keep, keep]).to(net.whiten.bias.dtype)

        def _freeze_dead(grad: torch.Tensor) -> torch.Tensor:
            return grad * mask.to(grad.device, grad.dtype)

        net._whiten_bias_hook = net.whiten.bias.register_hook(_freeze_dead)
    net.whitened = True
    return int((~keep).sum())


def fastnet(drop_rate: float = 0.0, **kwargs: Any) -> FastNet:
    allowed = {"widths", "depth", "whiten_kernel", "bn_momentum", "feature_scale", "activation"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ModelError(f"cifar_fastnet: unknown model.kwargs {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    return FastNet(drop_rate=drop_rate, **kwargs)
