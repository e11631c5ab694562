"""Weight files on disk and loading a state dict into a backbone, checked key by key.

A local file is ``.safetensors`` or a PyTorch state dict (``.pth``, ``.pt``, ``.bin``, read with
``weights_only``); :func:`load_checked` maps it onto a backbone, skipping the classifier unless
asked, and names every key that does not fit. Used by weights.py (local and offline sources)
and hub.py.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from cnnlab.errors import ModelError

_HEAD_FALLBACK_PREFIXES = ("fc", "classifier", "head", "head.fc", "last_linear")
_MAX_LISTED = 5


def is_bn_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


# --------------------------------------------------------------------------- local files


def torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        raise ModelError(f"cannot read weights file {path}: {_torch_load_reason(exc)}") from exc
    return _as_state_dict(obj, path)


def _torch_load_reason(exc: Exception) -> str:
    text = str(exc)
    match = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if match:
        return (
            f"it holds a Python object ({match.group(1)}) besides tensors, and cnnlab only "
            "loads plain tensors (torch.load weights_only=True). Re-save just the weights, "
            "e.g. torch.save(model.state_dict(), path), or as .safetensors."
        )
    if "Weights only load failed" in text or isinstance(exc, pickle.UnpicklingError):
        return "not a PyTorch state dict or the file is damaged."
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__


def _as_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ModelError(
            f"weights file {path} does not hold a state dict (a mapping of names to tensors, "
            "optionally under 'state_dict' or 'model')."
        )
    bad = [
        str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)
    ]
    if bad:
        raise ModelError(
            f"weights file {path} is not a state dict: entries that are not tensors: "
            f"{', '.join(bad[:_MAX_LISTED])}{' ...' if len(bad) > _MAX_LISTED else ''}."
        )
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def read_local(source: str | os.PathLike[str]) -> tuple[Path, dict[str, torch.Tensor]]:
    path = Path(source).expanduser()
    if not path.is_file():
        what = "is a directory, not a weights file" if path.is_dir() else "not found"
        raise ModelError(
            f"pretrained weights file {path} {what}. `pretrained:` takes `hub`, `offline` or the "
            "path of a .safetensors / .pth / .pt / .bin file."
        )
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return path, _as_state_dict(load_file(str(path), device="cpu"), path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"cannot read weights file {path}: {exc}") from exc
    return path, torch_load(path)


# --------------------------------------------------------------------------- key matching


def head_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None)
    classifier = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    if isinstance(classifier, str) and classifier:
        return (classifier,)
    if isinstance(classifier, (list, tuple)) and classifier:
        return tuple(str(c) for c in classifier)
    return _HEAD_FALLBACK_PREFIXES


def under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def load_checked(
    backbone: torch.nn.Module,
    source: Mapping[str, torch.Tensor],
    *,
    where: str,
    keep_classifier: bool,
) -> None:
    """Load ``source`` into ``backbone`` by key, strictly, ignoring classifier keys unless asked.

    Classifier keys in ``source`` that the (headless) backbone lacks are dropped; when
    ``keep_classifier`` is false the backbone's own classifier (if any) is left as is.
    """
    target = backbone.state_dict()
    heads = head_prefixes(backbone)
    tgt_head = [k for k in target if under(k, heads)]
    if keep_classifier and not tgt_head:
        raise ModelError(
            f"keep_classifier=True but the model has no classifier to load {where} into."
        )

    accepted: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[str] = []
    for key, value in source.items():
        is_head = under(key, heads)
        if key not in target:
            if not is_head:
                unexpected.append(key)
            continue
        if is_head and not keep_classifier:
            continue
        if tuple(value.shape) != tuple(target[key].shape):
            shapes = f"file {tuple(value.shape)}, model {tuple(target[key].shape)}"
            mismatched.append(f"{key} ({shapes})")
            continue
        accepted[key] = value
    missing = [
        k
        for k in target
        if k not in source and not is_bn_counter(k) and (keep_classifier or not under(k, heads))
    ]

    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): {listing(mismatched)}")
        if missing:
            parts.append(f"{len(missing)} key(s) missing from the file: {listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) in the file: {listing(unexpected)}")
        arch = (getattr(backbone, "pretrained_cfg", None) or {}).get("architecture")
        model = f"the {arch} model" if arch else "the model"
        raise ModelError(f"{where} does not fit {model}: " + "; ".join(parts) + ".")

    merged = dict(target)
    merged.update(accepted)
    backbone.load_state_dict(merged, strict=True)
