"""Resumable training state without pickle: tensors in safetensors, the rest in JSON.

Saved after every finished epoch; `cnnlab train --resume` reloads it and continues with the
next epoch, so a run killed at any moment loses at most the epoch in progress.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cnnlab.errors import TrainingError
from cnnlab.utils.io import atomic_path, atomic_write_json

META = "train_state.json"


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, pstate in state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


Optimizers = torch.optim.Optimizer | Sequence[torch.optim.Optimizer]


def _as_list(optimizer: Optimizers) -> list[torch.optim.Optimizer]:
    return [optimizer] if isinstance(optimizer, torch.optim.Optimizer) else list(optimizer)


def _prefix(k: int) -> str:
    return "optim." if k == 0 else f"optim{k}."  # the first keeps the original names


def save_state(folder: Path, model: torch.nn.Module, optimizer: Optimizers,
               meta: dict[str, Any], extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write the state: a new per-epoch tensors file, then the JSON that points at it.

    The JSON's rename is the commit point: a kill before it leaves the previous epoch's JSON,
    still pointing at the previous epoch's tensors, which are only deleted after the commit.
    ``optimizer`` may be a list (the fast recipe steps SGD and Muon).
    """
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    opt_metas = []
    for k, opt in enumerate(_as_list(optimizer)):
        opt_tensors, opt_meta = _flatten_optimizer(opt.state_dict())
        tensors.update({_prefix(k) + name[len("optim."):]: v for name, v in opt_tensors.items()})
        opt_metas.append(opt_meta)
    for k, v in (extra_tensors or {}).items():
        tensors[f"extra.{k}"] = v.detach().cpu().contiguous().clone()
    epoch = int(meta["epoch"])
    tensors["stamp.epoch"] = torch.tensor([epoch])
    name = f"train_state-e{epoch:04d}.safetensors"
    with atomic_path(folder / name) as tmp:
        save_file(tensors, str(tmp))
    more = {"more_optimizers": opt_metas[1:]} if len(opt_metas) > 1 else {}
    atomic_write_json(folder / META, {**meta, "tensors": name, "optimizer": opt_metas[0], **more})
    for old in folder.glob("train_state-e*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_state(folder: Path, model: torch.nn.Module, optimizer: Optimizers
               ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    meta_path = folder / META
    if not meta_path.is_file():
        raise TrainingError(f"{folder}: no saved training state to resume from")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        name = meta.pop("tensors")
        int(meta["epoch"]), int(meta["step"]), list(meta["history"])  # noqa: B018 - shape check
        if not isinstance(name, str) or "/" in name or "\\" in name:
            raise ValueError(f"bad tensors file name {name!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TrainingError(f"{meta_path}: corrupt training state ({_what(exc)}){DISCARD_HINT}") from None
    tensor_path = folder / name
    if not tensor_path.is_file():
        raise TrainingError(f"{meta_path}: points at {name}, which is missing{DISCARD_HINT}")
    try:
        tensors = load_file(str(tensor_path))
        stamp = int(tensors["stamp.epoch"][0])
    except Exception as exc:  # safetensors raises its own error types
        raise TrainingError(f"{tensor_path}: corrupt training state ({_what(exc)}){DISCARD_HINT}") from None
    if stamp != int(meta["epoch"]):
        raise TrainingError(f"{folder}: training state files disagree (interrupted save); cannot resume"
                            f"{DISCARD_HINT}")
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        opts = _as_list(optimizer)
        metas = [meta.pop("optimizer"), *meta.pop("more_optimizers", [])]
        if len(metas) != len(opts):
            raise ValueError(f"the saved state has {len(metas)} optimizer(s), this run {len(opts)}")
        for k, (opt, m) in enumerate(zip(opts, metas)):
            own = {"optim." + n[len(_prefix(k)):]: v for n, v in tensors.items() if n.startswith(_prefix(k))}
            opt.load_state_dict(_unflatten_optimizer(own, m))
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"{tensor_path}: does not fit this run's model or optimizer ({_what(exc)})"
                            f"{DISCARD_HINT}") from None
    extra = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
    return meta, extra


#: Appended to every corrupt-state message: the CLI flag that starts the run again.
DISCARD_HINT = "; `cnnlab train --resume RUN_DIR --discard-state` drops it and starts again from epoch 1"


def _what(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"missing {exc}" if isinstance(exc, KeyError) else (text[0] if text else type(exc).__name__)


def discard_state(folder: Path) -> str | None:
    """Remove a run's resume state; return a description of what was dropped (None: there was none)."""
    import shutil

    if not folder.exists():
        return None
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        what = f"the state saved after epoch {int(meta['epoch']) + 1}"
    except (OSError, ValueError, KeyError, TypeError):
        what = "an unreadable state"
    shutil.rmtree(folder, ignore_errors=True)
    return f"{what} ({folder})"
