"""Greedy model soup: average the weights of a run's best checkpoints (Wortsman et al. 2022).

    from cnnlab.training.soup import greedy_soup, soup_from_run
    result = greedy_soup(model, [(path_a, 0.91), (path_b, 0.90)], score=val_accuracy)
    result = soup_from_run("runs/quick", model, score=val_accuracy)   # run_dir/checkpoints/index.json
    result.used, result.score, result.individual

"Model soups", greedy variant: the candidates come ranked by their own validation score, best
first. The soup starts as the best checkpoint; each next checkpoint joins the uniform average
only when the validation score of the new average does not drop below the soup's so far.
``score(model) -> float`` is higher-is-better (validation accuracy, say) and is called once per
candidate (the best's own score included, so every comparison uses the same measure).

Weights are read with safetensors (never pickle). Floating tensors are averaged (in float64,
then cast back to the model's dtype); integer buffers such as BatchNorm's
``num_batches_tracked`` are the best checkpoint's. The model keeps its device and dtype; it
ends holding the soup, or its own weights again with ``restore=True``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import load_file

from cnnlab.errors import ModelError

INDEX_NAME = "index.json"
CHECKPOINTS_DIR = "checkpoints"


@dataclass
class SoupResult:
    """The soup's weights, the checkpoints in it (best first), its score, and each candidate's own score."""

    state_dict: dict[str, torch.Tensor]
    used: list[Path]
    score: float
    individual: list[float]  # the candidates' own scores as given, in the order tried (best first)


def read_checkpoint(path: str | Path, reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A safetensors checkpoint whose keys and shapes match ``reference``; else a ModelError naming the file."""
    from cnnlab.models.io import _pickle_kind

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"soup checkpoint not found: {path}")
    kind = _pickle_kind(path)
    if kind:
        raise ModelError(f"{path}: this is {kind}, refused (cnnlab loads only safetensors weights)")
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(f"{path}: not a readable safetensors file ({exc})") from None
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    if missing or unexpected:
        raise ModelError(f"{path}: its keys do not match the model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    for key, ref in reference.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise ModelError(f"{path}: {key} has shape {tuple(state[key].shape)}, the model's is {tuple(ref.shape)}")
    return state


def _averaged(best: dict[str, torch.Tensor], sums: dict[str, torch.Tensor], n: int,
              reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, ref in reference.items():
        if key in sums:
            out[key] = (sums[key] / n).to(ref.dtype)
        else:
            out[key] = best[key].to(ref.dtype)
    return out


def greedy_soup(model: torch.nn.Module, candidates: Sequence[tuple[str | Path, float]],
                score: Callable[[torch.nn.Module], float], *, restore: bool = False,
                log: Callable[[str], object] = print) -> SoupResult:
    """Wortsman et al.'s greedy soup of ``candidates`` = [(safetensors path, own validation score)], best first.

    The model is evaluated by ``score`` with each trial average loaded in it. It ends holding the
    soup (``restore=True``: its own weights as before the call). Returns a :class:`SoupResult`
    whose ``state_dict`` is on the CPU.
    """
    if not candidates:
        raise ModelError("greedy_soup needs at least one checkpoint")
    reference = {k: v.detach() for k, v in model.state_dict().items()}
    own = {k: v.cpu().clone() for k, v in reference.items()} if restore else None
    paths = [Path(p) for p, _ in candidates]
    individual = [float(s) for _, s in candidates]
    floating = [k for k, v in reference.items() if v.is_floating_point()]

    best = read_checkpoint(paths[0], reference)
    sums = {k: best[k].double() for k in floating}
    used = [paths[0]]
    model.load_state_dict(_averaged(best, sums, 1, reference))
    current = float(score(model))
    log(f"soup: {paths[0].name} alone scores {current:.4f}")
    for path in paths[1:]:
        state = read_checkpoint(path, reference)
        trial = {k: sums[k] + state[k].double() for k in floating}
        model.load_state_dict(_averaged(best, trial, len(used) + 1, reference))
        value = float(score(model))
        if math.isfinite(value) and value >= current:
            sums, current = trial, value
            used.append(path)
            log(f"soup: + {path.name} -> {value:.4f} ({len(used)} checkpoints)")
        else:
            log(f"soup: {path.name} left out ({value:.4f} < {current:.4f})")
    soup = {k: v.detach().cpu().clone() for k, v in _averaged(best, sums, len(used), reference).items()}
    model.load_state_dict(own if own is not None else soup)
    return SoupResult(soup, used, current, individual)


def read_index(run_dir: str | Path) -> list[dict[str, Any]]:
    """``run_dir/checkpoints/index.json``: [{"epoch", "path", "monitor", "value"}], best first."""
    path = Path(run_dir) / CHECKPOINTS_DIR / INDEX_NAME
    if not path.is_file():
        raise ModelError(f"{path}: no checkpoint index (train with train.checkpoint.save_top_k above 1)")
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(entries, list) or not entries:
        raise ModelError(f"{path}: expected a non-empty list of checkpoints")
    for i, e in enumerate(entries):
        if not (isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("value"), (int, float))):
            raise ModelError(f"{path}: entry {i} needs a string 'path' and a number 'value', got {e!r}")
    return entries


def _resolve(run_dir: Path, rel: str) -> Path:
    for base in (run_dir, run_dir / CHECKPOINTS_DIR):
        if (base / rel).is_file():
            return base / rel
    return run_dir / rel  # read_checkpoint names it as missing


def soup_from_run(run_dir: str | Path, model: torch.nn.Module, score: Callable[[torch.nn.Module], float], *,
                  restore: bool = False, log: Callable[[str], object] = print) -> SoupResult:
    """The greedy soup of a run's top-k checkpoints, in the order of ``run_dir/checkpoints/index.json``.

    Paths in the index are relative to the run directory (or to its checkpoints folder).
    """
    run_dir = Path(run_dir)
    entries = read_index(run_dir)
    candidates = [(_resolve(run_dir, e["path"]), float(e["value"])) for e in entries]
    return greedy_soup(model, candidates, score, restore=restore, log=log)


__all__ = ["SoupResult", "greedy_soup", "soup_from_run", "read_index", "read_checkpoint"]
