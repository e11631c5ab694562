"""A validation-weighted ensemble of candidates: Caruana et al. (2004) greedy selection.

Start from the empty ensemble; in each of ``rounds`` rounds add (with replacement) the member
whose addition gives the lowest validation log loss of the averaged probabilities; the weights
are how often each member was added. AutoGluon weights its tabular ensembles the same way.
The ensemble's probabilities are the weighted mean of its members' (each with its own TTA).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ROUNDS = 25


def log_loss(probs: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    losses = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0))
    return float(np.average(losses, weights=sample_weight))


def caruana_weights(val_probs: Sequence[np.ndarray], y: np.ndarray, rounds: int = ROUNDS,
                    sample_weight: np.ndarray | None = None) -> np.ndarray:
    """Weights (summing to 1) of the members whose ``val_probs`` (each (N, C)) are given;
    ``sample_weight``: per-image weights of the log loss (class-balanced on imbalanced data)."""
    if not val_probs:
        raise ValueError("an ensemble needs at least one member")
    counts = np.zeros(len(val_probs))
    total = np.zeros_like(val_probs[0], dtype=np.float64)
    for r in range(rounds):
        losses = [log_loss((total + p) / (r + 1), y, sample_weight) for p in val_probs]
        best = int(np.argmin(losses))  # ties: the earlier member (the caller lists the best first)
        counts[best] += 1
        total += val_probs[best]
    return counts / counts.sum()


def blend(probs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The weighted mean of the members' probabilities."""
    out = np.zeros_like(probs[0], dtype=np.float64)
    for p, w in zip(probs, weights):
        out += w * p
    return (out / max(sum(weights), 1e-12)).astype(np.float32)
