"""cnnlab's own architectures, registered with timm's ``register_model``.

After ``import cnnlab.models`` (which imports this module), ``timm.create_model("nasnet_mobile")``
and ``timm.create_model("cifar_fastnet", num_classes=0)`` work like any timm model, and cnnlab's
registry builds them through timm too: there is one way to build every backbone. The heavy
modules stay lazy: each entry point imports its module when called.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from timm.models import register_model

from cnnlab.errors import ModelError

# What timm.create_model hands every entry point, which cnnlab's own constructors do not take.
_TIMM_ARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _own(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k not in _TIMM_ARGS}


@register_model
def nasnet_mobile(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """NASNet-A Mobile (4 @ 1056), equal to Keras's NASNetMobile base"""
    from cnnlab.models import nasnet

    return nasnet.nasnet_mobile(pretrained, **_own(kwargs))


@register_model
def cifar_fastnet(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """fast small-image conv net: patch-whitening stem + 3 conv blocks (the fast recipe)"""
    from cnnlab.models.fastnet import fastnet

    kwargs = _own(kwargs)
    if pretrained:
        raise ModelError("cifar_fastnet: there are no pretrained weights; it trains from scratch (the fast recipe)")
    if kwargs.pop("num_classes", 0):
        raise ModelError("cifar_fastnet is a backbone without a classifier: create it with num_classes=0 "
                         "(cnnlab puts its head on top)")
    kwargs.pop("in_chans", None)
    return fastnet(**kwargs)


#: cnnlab's own architectures (registered with timm above), by name.
OWN_MODELS = {"nasnet_mobile": nasnet_mobile, "cifar_fastnet": cifar_fastnet}
