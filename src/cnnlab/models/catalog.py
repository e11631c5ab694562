"""The table of architectures cnnlab adds to timm's, and the decorator that fills it.

Kept apart from registry.py so that model modules can register themselves without importing
the factory (registry -> own -> catalog, never back).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

OWN: dict[str, tuple[Callable[..., nn.Module], str]] = {}


def register(name: str, description: str = "") -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a backbone factory ``fn(drop_rate=..., **kwargs) -> nn.Module``.

    The module must provide ``forward_features(x) -> (N, C, H, W)`` and ``num_features``.
    """

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        OWN[name] = (fn, description or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco
