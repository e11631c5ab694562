"""Optimisers with parameter groups: head vs backbone learning rates, layer-wise decay."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnlab.config import OptimizerConfig
from cnnlab.errors import ConfigError


def _split_decay(params: list[tuple[str, nn.Parameter]]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Weights that get weight decay, and biases / norm parameters that do not."""
    decay, no_decay = [], []
    for name, p in params:
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return decay, no_decay


def param_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict]:
    """Trainable parameters grouped by learning rate (and weight decay)."""
    head_lr = cfg.lr
    base_lr = cfg.base_lr if cfg.base_lr is not None else cfg.lr
    groups: list[tuple[list[tuple[str, nn.Parameter]], float]] = []
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        groups.append(([(n, p) for n, p in model.named_parameters() if p.requires_grad], head_lr))
    else:
        base_ids: set[int] = set()
        if cfg.layer_decay is not None:
            from cnnlab.models.blocks import backbone_blocks

            blocks = backbone_blocks(backbone)
            for k, block in enumerate(blocks):
                scale = cfg.layer_decay ** (len(blocks) - k)
                named = [(f"backbone.b{k}.{n}", p) for n, p in block.named_parameters() if p.requires_grad]
                base_ids.update(id(p) for p in block.parameters())
                groups.append((named, base_lr * scale))
        rest_base = [(n, p) for n, p in backbone.named_parameters() if p.requires_grad and id(p) not in base_ids]
        groups.append((rest_base, base_lr))
        in_backbone = {id(p) for p in backbone.parameters()}
        groups.append(([(n, p) for n, p in model.named_parameters()
                        if p.requires_grad and id(p) not in in_backbone], head_lr))
    out = []
    for named, lr in groups:
        decay, no_decay = _split_decay(named)
        for params, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)):
            if params:
                out.append({"params": params, "lr": lr, "initial_lr": lr, "weight_decay": wd})
    if not out:
        raise ConfigError("the model has no trainable parameters (is everything frozen?)")
    return out


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if cfg.name == "adam":
        # Plain Adam's weight_decay is L2-in-the-gradient; cnnlab's L2 goes through the loss
        # (Keras's meaning) and decoupled decay through AdamW, so Adam gets none here.
        for g in groups:
            g["weight_decay"] = 0.0
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    if cfg.name == "sgd":
        if cfg.nesterov and cfg.momentum <= 0:
            raise ConfigError("train.optimizer.nesterov: Nesterov momentum needs train.optimizer.momentum > 0")
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    raise ConfigError(f"train.optimizer.name: unknown optimiser {cfg.name!r} (adam, adamw, sgd)")
