"""Registrations of the architectures cnnlab adds to timm's (imports stay lazy)."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from cnnlab.models.catalog import register


@register("nasnet_mobile", "NASNet-A Mobile (4 @ 1056), equal to Keras's NASNetMobile base")
def nasnet_mobile(drop_rate: float = 0.0, **kwargs: Any) -> nn.Module:
    from cnnlab.models.nasnet import NASNetMobile

    return NASNetMobile(num_classes=0, drop_rate=drop_rate, **kwargs)


@register("cifar_fastnet", "fast small-image conv net: patch-whitening stem + 3 conv blocks (the fast recipe)")
def cifar_fastnet(drop_rate: float = 0.0, **kwargs: Any) -> nn.Module:
    from cnnlab.models.fastnet import fastnet

    return fastnet(drop_rate=drop_rate, **kwargs)
