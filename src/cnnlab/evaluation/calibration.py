"""Temperature scaling (Guo et al. 2017): one scalar T so that softmax(logits / T) is calibrated.

Fitted on the validation split after training by minimising the negative log-likelihood over
log T with L-BFGS (PyTorch's optimiser: a 1-parameter convex problem, a few milliseconds);
argmax, hence accuracy, is unchanged. The expected calibration error (15 equal-width bins) before
and after is returned so reports can show both.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: The temperature is kept within these bounds (a degenerate validation split cannot send it to 0 or inf).
T_MIN, T_MAX = 0.05, 20.0


def ece(probs: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, bins: int = 15) -> float:
    """Expected calibration error of probabilities (N, classes) against labels."""
    from cnnlab.evaluation.metrics import expected_calibration_error

    return expected_calibration_error(torch.as_tensor(np.asarray(probs), dtype=torch.float32),
                                      torch.as_tensor(np.asarray(y), dtype=torch.long), bins)[0]


def uncalibrated(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities before the temperature, from those after it: softmax(T * log p) (log p is
    logits / T up to a constant per row), so no second pass through the model is needed."""
    z = temperature * np.log(np.clip(np.asarray(probs, np.float64), 1e-30, None))
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def fit_temperature(logits: torch.Tensor, y: np.ndarray | torch.Tensor) -> tuple[float, float, float]:
    """(temperature, ECE before, ECE after) for raw ``logits`` (N, classes) and labels ``y``."""
    z = torch.as_tensor(logits, dtype=torch.float32).detach()
    t = torch.as_tensor(np.asarray(y), dtype=torch.long)
    before = ece(z.softmax(1), t)
    if len(z) < 2 or z.shape[1] < 2 or bool((z.argmax(1) == t).all()):
        # Nothing to learn from: with every validation image right, the likelihood only grows as T
        # goes to 0 (ever sharper), which would make the model overconfident on new images.
        return 1.0, before, before
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), t)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    temperature = float(np.clip(float(log_t.detach().exp()), T_MIN, T_MAX))
    if not np.isfinite(temperature):
        temperature = 1.0
    after = ece((z / temperature).softmax(1), t)
    return temperature, before, after
