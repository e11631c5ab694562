"""A backbone as an ordered list of blocks, for freezing all but the last N and for
layer-wise learning-rate decay.

timm models describe their own grouping (``group_matcher``); models of our own expose
``feature_blocks()``. Either way the result is a list, stem first, each entry an
``nn.ModuleList`` of the modules that make up that block.
"""

from __future__ import annotations

import torch.nn as nn

from cnnlab.errors import ModelError


def backbone_blocks(backbone: nn.Module) -> list[nn.ModuleList]:
    if hasattr(backbone, "feature_blocks"):
        return [b if isinstance(b, nn.ModuleList) else nn.ModuleList([b]) for b in backbone.feature_blocks()]
    if hasattr(backbone, "group_matcher"):
        from timm.models import group_modules

        groups = group_modules(backbone, backbone.group_matcher(coarse=False))
        named = dict(backbone.named_modules())
        blocks = []
        for gid in sorted(k for k in groups if isinstance(k, (int, float))):
            mods = [named[n] for n in groups[gid] if n in named]
            if any(True for m in mods for _ in m.parameters()):
                blocks.append(nn.ModuleList(mods))
        if blocks:
            return blocks
    raise ModelError(f"cannot split {type(backbone).__name__} into blocks for partial unfreezing")
