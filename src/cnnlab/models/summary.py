"""What a model is: parameter counts (Keras's way too), FLOPs and a Keras-like layer table."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable / frozen parameters, and Keras's total, which also counts BatchNorm statistics."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    bn_stats = sum(
        b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var"))
    )
    return {
        "total": total,
        "trainable": trainable,
        "non_trainable": total - trainable,
        "bn_statistics": bn_stats,
        "keras_total": total + bn_stats,
    }


def count_flops(model: nn.Module, input_size: int, channels: int = 3) -> int:
    """Forward FLOPs for one image (a multiply-add counts 2), from PyTorch's own FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.zeros(1, channels, input_size, input_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


def layer_table(model: nn.Module, input_size: int) -> list[dict[str, Any]]:
    """One row per leaf layer: name, type, output shape, parameters, trainable (Keras's summary)."""
    rows: list[dict[str, Any]] = []
    hooks = []

    def hook(name: str) -> Any:
        def fn(mod: nn.Module, _inp: Any, out: Any) -> None:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
            params = sum(p.numel() for p in mod.parameters(recurse=False))
            trainable = any(p.requires_grad for p in mod.parameters(recurse=False)) if params else None
            rows.append({"name": name, "type": type(mod).__name__, "output_shape": shape,
                         "parameters": params, "trainable": trainable})
        return fn

    for name, mod in model.named_modules():
        if name and not any(True for _ in mod.children()):
            hooks.append(mod.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return rows
