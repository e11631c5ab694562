"""NASNet-A Mobile ("NASNet-A (4 @ 1056)") in PyTorch, shaped like a timm model.

No maintained PyTorch library ships NASNet-A Mobile, so it is implemented here to be
layer-for-layer equal to ``keras.applications.NASNetMobile(include_top=False)``:

* stem: 3x3 stride-2 'valid' convolution (32 filters, no bias) + BatchNorm;
* two reduction "stem" cells (``penultimate // 24 // multiplier**2`` then
  ``penultimate // 24 // multiplier`` filters);
* three stacks of ``num_blocks`` normal cells, with a reduction cell between stacks
  (filters double with every stack); the last normal cell has ``6 * filters`` =
  ``penultimate_filters`` channels;
* a final ReLU.

Each cell takes two inputs, the previous cell's output ``x`` and the one before ``p``.
When ``p`` has a different spatial size than ``x`` it is "adjusted" by a factorized
reduction (two stride-2 1x1 paths, the second shifted by one pixel, concatenated, then
BatchNorm); when only its channel count differs it is projected by ReLU-1x1 conv-BN.

Padding follows Keras/TensorFlow exactly: stride-2 separable convolutions and the
reduction cells' pooling use explicit, possibly asymmetric, zero padding
(``imagenet_utils.correct_pad``), and 'same' average pooling excludes the padding from
the average (TensorFlow semantics, ``count_include_pad=False``). At 224x224 the feature
map is 1056x7x7; at 32x32 (Keras's minimum) it is 1056x1x1, as in Keras.

BatchNorm layers use ``eps=1e-3`` and ``momentum=0.0003`` (Keras ``momentum=0.9997``).
Convolutions have no bias. Parameter count of the base (``num_classes=0``): 4,232,978
trainable parameters plus 36,738 BatchNorm running statistics = 4,269,716, the number
Keras reports for ``NASNetMobile(include_top=False)``.

There are no public PyTorch weights; :func:`load_keras_h5` maps a Keras weight file
(e.g. ``NASNet-mobile-no-top.h5``) onto the model by Keras layer name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import ModelError

__all__ = [
    "NASNetMobile",
    "nasnet_mobile",
    "load_keras_h5",
    "BN_EPS",
    "BN_MOMENTUM",
]

BN_EPS = 1e-3
BN_MOMENTUM = 1.0 - 0.9997  # torch momentum = 1 - Keras momentum

# Keras NASNet preprocessing is "tf" mode: pixels scaled to [-1, 1].
_PRETRAINED_CFG: dict[str, Any] = {
    "architecture": "nasnet_mobile",
    "input_size": (3, 224, 224),
    "min_input_size": (3, 32, 32),
    "pool_size": (7, 7),
    "crop_pct": 0.875,
    "interpolation": "bicubic",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "num_classes": 1000,
    "first_conv": "stem.conv",
    "classifier": "classifier",
}


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _keras_pad(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Zero-pad like Keras ``ZeroPadding2D(correct_pad(x, k))`` before a stride-2 op.

    Even sizes get one row/column less at the top/left than at the bottom/right; odd
    sizes are padded symmetrically. Followed by a 'valid' stride-2 op this gives
    ``ceil(size / 2)``, i.e. TensorFlow 'same' behaviour.
    """
    half = kernel_size // 2
    height, width = x.shape[-2], x.shape[-1]
    top = half - (1 - height % 2)
    left = half - (1 - width % 2)
    return F.pad(x, (left, half, top, half))


class _SeparableStack(nn.Module):
    """Keras ``_separable_conv_block``: (ReLU -> depthwise -> pointwise -> BN) twice.

    Only the first depthwise convolution may be strided; with stride 2 its input is
    zero-padded Keras-style and the convolution is 'valid'.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, keras_id: str):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.kernel_size = kernel_size
        self.stride = stride
        self.keras_id = keras_id
        pad1 = 0 if stride == 2 else kernel_size // 2
        self.dw1 = nn.Conv2d(in_chs, in_chs, kernel_size, stride, pad1, groups=in_chs, bias=False)
        self.pw1 = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn1 = _bn(out_chs)
        self.dw2 = nn.Conv2d(
            out_chs, out_chs, kernel_size, 1, kernel_size // 2, groups=out_chs, bias=False
        )
        self.pw2 = nn.Conv2d(out_chs, out_chs, 1, bias=False)
        self.bn2 = _bn(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        if self.stride == 2:
            x = _keras_pad(x, self.kernel_size)
        x = self.bn1(self.pw1(self.dw1(x)))
        x = F.relu(x)
        return self.bn2(self.pw2(self.dw2(x)))

    def keras_layers(self) -> Iterator[tuple[str, str, tuple[nn.Module, ...]]]:
        k = self.keras_id
        yield f"separable_conv_1_{k}", "sep", (self.dw1, self.pw1)
        yield f"separable_conv_1_bn_{k}", "bn", (self.bn1,)
        yield f"separable_conv_2_{k}", "sep", (self.dw2, self.pw2)
        yield f"separable_conv_2_bn_{k}", "bn", (self.bn2,)


class _ReLUConvBN(nn.Module):
    """ReLU -> 1x1 conv (no bias) -> BN, the cells' input projection."""

    def __init__(self, in_chs: int, out_chs: int, conv_name: str, bn_name: str):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn = _bn(out_chs)
        self._names = (conv_name, bn_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(F.relu(x)))

    def keras_layers(self) -> Iterator[tuple[str, str, tuple[nn.Module, ...]]]:
        yield self._names[0], "conv", (self.conv,)
        yield self._names[1], "bn", (self.bn,)


class _FactorizedReduce(nn.Module):
    """Keras ``_adjust_block`` reduction branch: halves ``p``'s spatial size.

    ReLU, then two 1x1 stride-2 paths: one on ``p``, one on ``p`` shifted by one pixel
    (Keras: ZeroPadding2D((0,1),(0,1)) + Cropping2D((1,0),(1,0))); each gives
    ``filters // 2`` channels; concatenated and batch-normalized.
    """

    def __init__(self, in_chs: int, filters: int, block_id: str):
        super().__init__()
        half = filters // 2
        self.conv1 = nn.Conv2d(in_chs, half, 1, bias=False)
        self.conv2 = nn.Conv2d(in_chs, half, 1, bias=False)
        self.bn = _bn(2 * half)
        self.out_chs = 2 * half
        self.block_id = block_id

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        p = F.relu(p)
        path1 = p[:, :, ::2, ::2]
        shifted = F.pad(p[:, :, 1:, 1:], (0, 1, 0, 1))
        path2 = shifted[:, :, ::2, ::2]
        return self.bn(torch.cat([self.conv1(path1), self.conv2(path2)], dim=1))

    def keras_layers(self) -> Iterator[tuple[str, str, tuple[nn.Module, ...]]]:
        b = self.block_id
        yield f"adjust_conv_1_{b}", "conv", (self.conv1,)
        yield f"adjust_conv_2_{b}", "conv", (self.conv2,)
        yield f"adjust_bn_{b}", "bn", (self.bn,)


def _make_adjust(
    p_state: tuple[int, int] | None,
    x_state: tuple[int, int],
    filters: int,
    block_id: str,
) -> tuple[nn.Module | None, int]:
    """Build the 'p' adjustment for a cell; return (module or None, p channels after it).

    States are (channels, reduction level); a different level means a different
    spatial size (what Keras tests with the static shapes).
    """
    if p_state is None:  # first cell: p = ip, unchanged
        return None, x_state[0]
    p_chs, p_level = p_state
    if p_level != x_state[1]:
        mod = _FactorizedReduce(p_chs, filters, block_id)
        return mod, mod.out_chs
    if p_chs != filters:
        conv = _ReLUConvBN(
            p_chs, filters, f"adjust_conv_projection_{block_id}", f"adjust_bn_{block_id}"
        )
        return conv, filters
    return None, p_chs


class _Cell(nn.Module):
    """Common parts of the normal and reduction cells."""

    is_reduction = False

    def __init__(
        self,
        x_state: tuple[int, int],
        p_state: tuple[int, int] | None,
        filters: int,
        block_id: str,
    ):
        super().__init__()
        self.block_id = block_id
        self.filters = filters
        adjust, self.p_chs = _make_adjust(p_state, x_state, filters, block_id)
        self.adjust = adjust if adjust is not None else nn.Identity()
        kind = "reduction" if self.is_reduction else "normal"
        self.conv_1x1 = _ReLUConvBN(
            x_state[0], filters, f"{kind}_conv_1_{block_id}", f"{kind}_bn_1_{block_id}"
        )

    def _adjust_layers(self) -> Iterator[tuple[str, str, tuple[nn.Module, ...]]]:
        if not isinstance(self.adjust, nn.Identity):
            yield from self.adjust.keras_layers()  # type: ignore[operator]
        yield from self.conv_1x1.keras_layers()


class _NormalCell(_Cell):
    """NASNet-A normal cell (Keras ``_normal_a_cell``); output ``6 * filters`` channels."""

    def __init__(self, x_state, p_state, filters, block_id):
        super().__init__(x_state, p_state, filters, block_id)
        if self.p_chs != filters:
            raise ModelError(
                f"NASNet normal cell {block_id}: previous input has {self.p_chs} channels, "
                f"expected {filters}; check penultimate_filters/filter_multiplier"
            )
        b = block_id
        self.left1 = _SeparableStack(filters, filters, 5, 1, f"normal_left1_{b}")
        self.right1 = _SeparableStack(filters, filters, 3, 1, f"normal_right1_{b}")
        self.left2 = _SeparableStack(filters, filters, 5, 1, f"normal_left2_{b}")
        self.right2 = _SeparableStack(filters, filters, 3, 1, f"normal_right2_{b}")
        self.left5 = _SeparableStack(filters, filters, 3, 1, f"normal_left5_{b}")
        self.avg = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.out_chs = 6 * filters

    def forward(self, x: torch.Tensor, p: torch.Tensor | None) -> torch.Tensor:
        p = self.adjust(x if p is None else p)
        h = self.conv_1x1(x)
        x1 = self.left1(h) + self.right1(p)
        x2 = self.left2(p) + self.right2(p)
        x3 = self.avg(h) + p
        avg_p = self.avg(p)
        x4 = avg_p + avg_p  # Keras: two identical 3x3 'same' average pools of p, added
        x5 = self.left5(h) + h
        return torch.cat([p, x1, x2, x3, x4, x5], dim=1)

    def keras_layers(self) -> Iterator[tuple[str, str, tuple[nn.Module, ...]]]:
        yield from self._adjust_layers()
        for mod in (self.left1, self.right1, self.left2, self.right2, self.left5):
            yield from mod.keras_layers()


class _ReductionCell(_Cell):
    """NASNet-A reduction cell (Keras ``_reduction_a_cell``); halves the spatial size,
    output ``4 * filters`` channels."""

    is_reduction = True

    def __init__(self, x_state, p_state, filters, block_id):
        super().__init__(x_state, p_state, filters, block_id)
        b, pc = block_id, self.p_chs
        self.left1 = _SeparableStack(filters, filters, 5, 2, f"reduction_left1_{b}")
        self.right1 = _SeparableStack(pc, filters, 7, 2, f"reduction_right1_{b}")
        self.right2 = _SeparableStack(pc, filters, 7, 2, f"reduction_right2_{b}")
        self.right3 = _SeparableStack(pc, filters, 5, 2, f"reduction_right3_{b}")
        # Keras names this block "reduction_left4" although it is branch 5's left input.
        self.left5 = _SeparableStack(filters, filters, 3, 1, f"reduction_left4_{b}")
        # Pools on the explicitly zero-padded h ('valid'); zeros take part, as in Keras.
        self.max_pool = nn.MaxPool2d(3, stride=2)
        self.avg_pool = nn.AvgPool2d(3, stride=2)
        self.avg_same = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.out_chs = 4 * filters

    def forward(self, x: torch.Tensor, p: torch.Tensor | None) -> torch.Tensor:
        p = self.adjust(x if p is None else p)
        h = self.conv_1x1(x)
        h3 = _keras_pad(h, 3)
        max_h = self.max_pool(h3)
        x1 = self.left1(h) + self.right1(p)
        x2 = max_h + self.right2(p)
        x3 = self.avg_pool(h3) + self.right3(p)
        x4 = self.avg_same(x1) + x2
        x5 = self.left5(x1) + max_h
        return torch.cat([x2, x3, x4, x5], dim=1)

    def keras_layers(self) -> Iterator[tuple[str, str, tuple[nn.Module, ...]]]:
        yield from self._adjust_layers()
        for mod in (self.left1, self.right1, self.right2, self.right3, self.left5):
            yield from mod.keras_layers()


class NASNetMobile(nn.Module):
    """NASNet-A; defaults give NASNet-A Mobile (4 @ 1056), equal to Keras's NASNetMobile.

    Args:
        num_classes: classifier outputs; 0 gives no classifier (``forward`` returns
            the pooled 1056-d features).
        in_chans: input image channels.
        drop_rate: dropout before the classifier.
        penultimate_filters: channels of the last cell (a multiple of
            ``24 * filter_multiplier**2``).
        num_blocks: normal cells per stack.
        stem_block_filters: filters of the stem convolution.
        filter_multiplier: filter growth per stack.
        skip_reduction: Keras's ``skip_reduction`` (False for NASNet Mobile, True for
            NASNet Large): if True, the cell after a (non-stem) reduction cell gets the
            reduction cell's own ``p`` instead of its input as ``p``.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        penultimate_filters: int = 1056,
        num_blocks: int = 4,
        stem_block_filters: int = 32,
        filter_multiplier: int = 2,
        skip_reduction: bool = False,
    ):
        super().__init__()
        for name, value in (
            ("num_classes", num_classes),
            ("in_chans", in_chans),
            ("penultimate_filters", penultimate_filters),
            ("num_blocks", num_blocks),
            ("stem_block_filters", stem_block_filters),
            ("filter_multiplier", filter_multiplier),
        ):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ModelError(f"NASNet: {name} must be an integer, got {value!r}")
        if num_classes < 0:
            raise ModelError(f"NASNet: num_classes must be >= 0, got {num_classes}")
        if in_chans < 1 or num_blocks < 1 or stem_block_filters < 1 or filter_multiplier < 1:
            raise ModelError(
                "NASNet: in_chans, num_blocks, stem_block_filters and filter_multiplier "
                f"must be >= 1, got {in_chans}, {num_blocks}, {stem_block_filters}, "
                f"{filter_multiplier}"
            )
        if penultimate_filters < 1 or penultimate_filters % (24 * filter_multiplier**2) != 0:
            raise ModelError(
                "NASNet: penultimate_filters must be a positive multiple of "
                f"24 * filter_multiplier**2 = {24 * filter_multiplier**2}, "
                f"got {penultimate_filters}"
            )
        if not 0.0 <= float(drop_rate) < 1.0:
            raise ModelError(f"NASNet: drop_rate must be in [0, 1), got {drop_rate}")

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = float(drop_rate)
        self.penultimate_filters = penultimate_filters
        self.num_blocks = num_blocks
        self.stem_block_filters = stem_block_filters
        self.filter_multiplier = filter_multiplier
        self.skip_reduction = skip_reduction
        self.pretrained_cfg = dict(_PRETRAINED_CFG, num_classes=num_classes)
        self.default_cfg = self.pretrained_cfg

        filters = penultimate_filters // 24
        mult = filter_multiplier

        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(in_chans, stem_block_filters, 3, 2, 0, bias=False))
        self.stem.add_module("bn", _bn(stem_block_filters))

        # Build the cells, tracking (channels, reduction level) of x and p like Keras
        # tracks static shapes. `update_p[i]`: after cell i, p becomes cell i's input.
        cells: list[_Cell] = []
        update_p: list[bool] = []
        x_state: tuple[int, int] = (stem_block_filters, 1)
        p_state: tuple[int, int] | None = None

        def add(cell_cls: type[_Cell], cell_filters: int, block_id: str, advance_p: bool = True):
            nonlocal x_state, p_state
            cell = cell_cls(x_state, p_state, cell_filters, block_id)
            cells.append(cell)
            update_p.append(advance_p)
            if advance_p:
                p_state = x_state
            x_state = (cell.out_chs, x_state[1] + (1 if cell.is_reduction else 0))

        add(_ReductionCell, filters // mult**2, "stem_1")
        add(_ReductionCell, filters // mult, "stem_2")
        for stack in range(3):
            stack_filters = filters * mult**stack
            if stack > 0:
                reduce_id = f"reduce_{stack * num_blocks}"
                add(_ReductionCell, stack_filters, reduce_id, not skip_reduction)
            # Keras block ids: 0..n-1, then n+1..2n, then 2n+1..3n.
            first = stack * num_blocks + (1 if stack > 0 else 0)
            for i in range(num_blocks):
                add(_NormalCell, stack_filters, f"{first + i}")

        self.cells = nn.ModuleList(cells)
        self._update_p = update_p
        self.act = nn.ReLU()
        self.num_features = x_state[0]
        self.head_hidden_size = self.num_features
        self.feature_info = self._feature_info()

        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.head_drop = nn.Dropout(self.drop_rate)
        self.classifier: nn.Module = self._make_classifier(num_classes)
        self._init_weights()

    # ----------------------------------------------------------------- construction
    def _make_classifier(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        fc = nn.Linear(self.num_features, num_classes)
        nn.init.xavier_uniform_(fc.weight)  # Keras Dense default (glorot_uniform)
        nn.init.zeros_(fc.bias)
        return fc

    def _init_weights(self) -> None:
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                # He-normal on fan-in (Keras uses he_normal for the convolutions); for
                # depthwise kernels fan-in is k*k, which keeps activations well scaled.
                nn.init.kaiming_normal_(mod.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(mod, nn.BatchNorm2d):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)

    def _feature_info(self) -> list[dict[str, Any]]:
        info = [{"num_chs": self.stem_block_filters, "reduction": 2, "module": "stem"}]
        reduction = 2
        for i, cell in enumerate(self.cells):
            if cell.is_reduction:
                reduction *= 2
            last_of_level = i + 1 == len(self.cells) or self.cells[i + 1].is_reduction
            if last_of_level:
                info.append(
                    {"num_chs": cell.out_chs, "reduction": reduction, "module": f"cells.{i}"}
                )
        return info

    # ---------------------------------------------------------------- timm interface
    def feature_blocks(self) -> list[nn.Module]:
        """Ordered blocks of ``forward_features``: the stem, then every cell in order.

        Every parameter of ``forward_features`` belongs to exactly one block, so
        unfreezing the last N blocks unfreezes the top N cells.
        """
        return [self.stem, *self.cells]

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "avg"):
            raise ModelError(f"NASNet: only global_pool='avg' is supported, got {global_pool!r}")
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ModelError(f"NASNet: num_classes must be an integer >= 0, got {num_classes!r}")
        self.num_classes = num_classes
        self.pretrained_cfg["num_classes"] = num_classes
        device = self.stem.conv.weight.device
        self.classifier = self._make_classifier(num_classes).to(device)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        p: torch.Tensor | None = None
        for cell, advance_p in zip(self.cells, self._update_p):
            out = cell(x, p)
            if advance_p:
                p = x
            x = out
        return self.act(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(self.global_pool(x))
        x = self.head_drop(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ------------------------------------------------------------------ Keras names
    def keras_layers(self) -> Iterator[tuple[str, str, tuple[nn.Module, ...]]]:
        """Yield ``(keras_layer_name, kind, torch_modules)`` for every Keras layer with
        weights; kind is 'conv', 'sep' (depthwise, pointwise), 'bn' or 'dense'."""
        yield "stem_conv1", "conv", (self.stem.conv,)
        yield "stem_bn1", "bn", (self.stem.bn,)
        for cell in self.cells:
            yield from cell.keras_layers()
        if isinstance(self.classifier, nn.Linear):
            yield "predictions", "dense", (self.classifier,)


def nasnet_mobile(pretrained: bool = False, num_classes: int = 1000, **kwargs: Any) -> NASNetMobile:
    """Create NASNet-A Mobile (4 @ 1056). There are no public PyTorch weights."""
    if pretrained:
        raise ModelError(
            "nasnet_mobile: there are no public PyTorch weights for NASNet-A Mobile, so "
            "pretrained=True is not available. Train from scratch, or give a weights "
            "file with `pretrained: /path/to/file.safetensors` in the cnnlab model config "
            "(a Keras NASNet-mobile-no-top.h5 can be converted with "
            "cnnlab.models.nasnet.load_keras_h5)."
        )
    return NASNetMobile(num_classes=num_classes, **kwargs)


# ---------------------------------------------------------------------- Keras import
_WEIGHT_ORDER = {
    "conv": ("kernel",),
    "sep": ("depthwise_kernel", "pointwise_kernel"),
    "bn": ("gamma", "beta", "moving_mean", "moving_variance"),
    "dense": ("kernel", "bias"),
}


def _short_weight_name(name: str) -> str:
    """'scope/separable_conv_1_x/depthwise_kernel:0' -> 'depthwise_kernel'."""
    return name.rsplit("/", 1)[-1].split(":", 1)[0]


def _read_keras_groups(h5file: Any, path: str) -> dict[str, list[tuple[str, Any]]]:
    """Map layer name -> [(short weight name, numpy array)] for a Keras 2 / tf.keras /
    legacy-HDF5 weight or model file."""
    import numpy as np

    def text(value: Any) -> str:
        return value.decode("utf8") if isinstance(value, bytes) else str(value)

    root = h5file["model_weights"] if "model_weights" in h5file else h5file
    layers: dict[str, list[tuple[str, Any]]] = {}
    if "layer_names" in root.attrs:  # Keras 2 / tf.keras HDF5
        for lname in (text(n) for n in root.attrs["layer_names"]):
            group = root[lname]
            wnames = [text(n) for n in group.attrs.get("weight_names", [])]
            if wnames:
                layers[lname] = [(_short_weight_name(w), np.asarray(group[w])) for w in wnames]
        return layers
    if "layers" in root and "vars" in root:
        # Keras 3 .weights.h5 names layers by class and creation index
        # ('batch_normalization_17'), not by their Keras names, so they cannot be matched.
        raise ModelError(
            f"{path}: a Keras 3 '.weights.h5' file stores layers under generic names and "
            "cannot be matched to NASNet layers; in Keras, save the model in the legacy "
            "HDF5 format instead (model.save('model.h5')) or use the Keras Applications "
            "file NASNet-mobile-no-top.h5"
        )
    raise ModelError(
        f"{path}: not a Keras HDF5 weight file (no 'layer_names' attribute)"
    )


def _keras_to_torch(kind: str, weights: dict[str, Any]) -> list[torch.Tensor]:
    """Convert Keras arrays (channels-last layouts) to the torch modules' layouts."""
    t = torch.from_numpy
    if kind == "conv":  # (kh, kw, in, out) -> (out, in, kh, kw)
        return [t(weights["kernel"]).permute(3, 2, 0, 1)]
    if kind == "sep":  # depthwise (kh, kw, in, 1) -> (in, 1, kh, kw)
        dw = t(weights["depthwise_kernel"])
        kh, kw, cin, mult = dw.shape
        dw = dw.permute(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)
        return [dw, t(weights["pointwise_kernel"]).permute(3, 2, 0, 1)]
    if kind == "bn":
        return [t(weights[k]) for k in _WEIGHT_ORDER["bn"]]
    if kind == "dense":  # (in, out) -> (out, in)
        return [t(weights["kernel"]).T, t(weights["bias"])]
    raise AssertionError(kind)


def _torch_targets(kind: str, modules: tuple[nn.Module, ...]) -> list[torch.Tensor]:
    if kind == "conv":
        return [modules[0].weight]
    if kind == "sep":
        return [modules[0].weight, modules[1].weight]
    if kind == "bn":
        bn = modules[0]
        return [bn.weight, bn.bias, bn.running_mean, bn.running_var]
    return [modules[0].weight, modules[0].bias]


def load_keras_h5(
    model: NASNetMobile, path: str | Path, strict: bool = True
) -> dict[str, list[str]]:
    """Load Keras NASNet weights (e.g. ``NASNet-mobile-no-top.h5``) into ``model``.

    Layers are matched by their Keras names (``stem_conv1``,
    ``separable_conv_1_normal_left1_0``, ``adjust_bn_reduce_4``, ...) and every array
    is checked against the target's shape after conversion to the torch layout. A
    'predictions' layer in the file is loaded only if the model's classifier has the
    same shape; otherwise it is skipped (reported under 'skipped').

    Args:
        model: a :class:`NASNetMobile` built with the same configuration as the file.
        path: the ``.h5`` file: Keras 2 / tf.keras weights (``save_weights``) or a
            full model saved as HDF5 (``model.save('x.h5')``, also from Keras 3). Keras 3
            ``.weights.h5`` files are refused: they do not keep the layer names.
        strict: if True (default) every backbone layer of the model must be in the
            file; otherwise missing layers are reported and left as they are.

    Returns:
        ``{"loaded": [...], "missing": [...], "skipped": [...]}`` Keras layer names.

    Raises:
        ModelError: h5py is not installed, the file cannot be read, a layer is missing
            (strict) or an array has the wrong shape or number of weights.
    """
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModelError(
            f"{path}: reading Keras .h5 weights needs h5py (pip install h5py)"
        ) from exc

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: Keras weight file not found")
    try:
        with h5py.File(path, "r") as h5file:
            file_layers = _read_keras_groups(h5file, str(path))
    except ModelError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read Keras weights: {exc}") from exc

    loaded: list[str] = []
    missing: list[str] = []
    skipped: list[str] = []
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []
    expected_names = set()
    for lname, kind, modules in model.keras_layers():
        expected_names.add(lname)
        if lname not in file_layers:
            missing.append(lname)
            continue
        entries = file_layers[lname]
        order = _WEIGHT_ORDER[kind]
        if len(entries) != len(order):
            raise ModelError(
                f"{path}: layer '{lname}' has {len(entries)} weights, expected "
                f"{len(order)} ({', '.join(order)})"
            )
        names = [n for n, _ in entries]
        if sorted(names) == sorted(order):
            weights = {n: a for n, a in entries}
        else:  # unusual weight names: fall back on Keras's own weight order
            weights = {n: a for n, (_, a) in zip(order, entries)}
        targets = _torch_targets(kind, modules)
        try:
            sources = _keras_to_torch(kind, weights)
        except (ValueError, RuntimeError) as exc:
            raise ModelError(
                f"{path}: layer '{lname}' has an unexpected weight layout: {exc}"
            ) from exc
        if any(s.shape != d.shape for s, d in zip(sources, targets)):
            if kind == "dense":  # a classifier for another number of classes
                skipped.append(lname)
                continue
            got = [tuple(s.shape) for s in sources]
            want = [tuple(d.shape) for d in targets]
            raise ModelError(
                f"{path}: layer '{lname}' shapes {got} do not match the model's {want}; "
                "was the file saved from a NASNet with the same configuration?"
            )
        pending.extend(zip(targets, sources))
        loaded.append(lname)

    if missing and strict:
        backbone_missing = [m for m in missing if m != "predictions"]
        if backbone_missing:
            shown = ", ".join(backbone_missing[:5])
            more = f" and {len(backbone_missing) - 5} more" if len(backbone_missing) > 5 else ""
            raise ModelError(
                f"{path}: {len(backbone_missing)} NASNet layers are missing from the file: "
                f"{shown}{more}"
            )
    skipped.extend(sorted(n for n in file_layers if n not in expected_names))
    with torch.no_grad():
        for dst, src in pending:
            dst.copy_(src.to(dtype=dst.dtype, device=dst.device))
    return {"loaded": loaded, "missing": missing, "skipped": skipped}
