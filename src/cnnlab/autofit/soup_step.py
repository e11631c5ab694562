"""Greedy soup (Wortsman et al. 2022) of a candidate's top-k checkpoints, when the trainer kept them.

The trainer keeps them with ``train.checkpoint.save_top_k`` (``run_dir/checkpoints/index.json``,
best first); :func:`cnnlab.training.soup.greedy_soup` averages a checkpoint in only when the
validation accuracy does not drop. The souped weights replace the run's model.safetensors
only when they score higher on validation than the final weights. Skipped, with a log line,
where either piece is missing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def soup_run(run_dir: Path, val_x: np.ndarray, val_y: np.ndarray, final_accuracy: float,
             log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Soup ``run_dir``'s top-k checkpoints; returns what was done (None: skipped)."""
    index = run_dir / "checkpoints" / "index.json"
    if not index.is_file():
        return None
    from cnnlab.inference import InferenceModel
    from cnnlab.models.io import read_card, save_model
    from cnnlab.training.soup import greedy_soup

    entries = json.loads(index.read_text(encoding="utf-8"))
    if len(entries) < 2:
        return None
    pred = InferenceModel.load(run_dir)
    model = pred.model

    def score(m: Any) -> float:  # m is pred.model with the candidate weights loaded into it
        return float((pred.logits(val_x).argmax(1).numpy() == val_y).mean())

    cands = [(run_dir / e["path"], float(e["value"])) for e in entries]
    result = greedy_soup(model, cands, score, log=log)
    out = {"used": [str(p) for p in result.used], "score": result.score, "individual": result.individual,
           "final": final_accuracy, "applied": False}
    if len(result.used) > 1 and result.score > final_accuracy:
        model.load_state_dict(result.state_dict)
        card = read_card(run_dir)
        save_model(model, run_dir, {k: v for k, v in card.items()
                                    if k not in ("format", "cnnlab_version", "spec", "parameters")})
        out["applied"] = True
        log(f"soup of {len(result.used)} checkpoints: validation {result.score:.4f} (final weights "
            f"{final_accuracy:.4f}); saved as the model")
    return out
