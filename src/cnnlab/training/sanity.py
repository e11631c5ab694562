"""Checks on a trained model before its run is called finished (both recipes call them).

- Every floating-point tensor of the model (weights and BatchNorm statistics) must be finite:
  a run can keep a finite training loss while a weight or a running variance is already inf.
- The model, in eval mode, must not predict one class for (nearly) every training image while
  the training accuracy, measured in training mode, says it learnt: that is a model whose
  eval-mode behaviour (BatchNorm running statistics, averaged weights) disagrees with training,
  and saving it as finished would hand the user a constant classifier (issue 14: 83.6% training
  accuracy, 10.00% test accuracy on grey images).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from cnnlab.errors import TrainingError

#: The share of the sampled training images given one class that counts as a collapse ...
COLLAPSE_SHARE = 0.9
#: ... when the training accuracy exceeds the eval-mode accuracy on the same images by this much.
COLLAPSE_GAP = 0.25
#: Runs of fewer optimizer steps only get a warning (running statistics still settling).
MIN_STEPS = 20


def check_finite_weights(model: nn.Module, lr: float | None = None) -> None:
    """Raise a TrainingError naming the first tensor of ``model`` that holds NaN or inf."""
    for name, t in model.state_dict().items():
        if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            hint = f" (try a lower learning rate than {lr:g})" if lr else ""
            raise TrainingError(f"the trained weights are not finite: {name} holds NaN or inf; "
                                f"the run is not saved as finished{hint}")


def check_not_collapsed(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    train_accuracy: float | None,
    *,
    class_names: list[str] | None = None,
    sample: int = 512,
    seed: int = 0,
    predict: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    warn_only: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Predict a seeded sample of training images in eval mode; raise a TrainingError when one class
    takes at least COLLAPSE_SHARE of them while ``train_accuracy`` beats the eval-mode accuracy by
    COLLAPSE_GAP or more (and beats always answering the sample's commonest label).

    ``predict(model, x_sample) -> logits`` defaults to :func:`cnnlab.evaluation.predict.predict_logits`.
    ``warn_only``: log a warning instead (the loop does so for runs of fewer than MIN_STEPS steps,
    where BatchNorm's running averages cannot have caught up yet).
    Returns what was measured: ``share`` (of the commonest prediction) and ``accuracy`` (eval mode).
    """
    from cnnlab.evaluation.predict import predict_logits

    n = len(y)
    if n == 0:
        return {}
    idx = np.sort(np.random.default_rng(seed).permutation(n)[: min(sample, n)])
    xs = x[torch.from_numpy(idx)] if torch.is_tensor(x) else x[idx]
    ys = (y.cpu().numpy() if torch.is_tensor(y) else np.asarray(y))[idx]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = predict(model, xs) if predict is not None else predict_logits(model, xs)
    finally:
        model.train(was_training)
    pred = logits.argmax(1).cpu().numpy()
    counts = np.bincount(pred)
    top = int(counts.argmax())
    share = float(counts[top]) / len(pred)
    acc = float((pred == ys).mean())
    majority = float(np.bincount(ys).max()) / len(ys)
    if (train_accuracy is not None and share >= COLLAPSE_SHARE and train_accuracy - acc >= COLLAPSE_GAP
            and train_accuracy >= majority + 0.1):
        name = class_names[top] if class_names and top < len(class_names) else str(top)
        msg = (f"the trained model predicts class {name!r} for {counts[top]} of {len(pred)} training images in "
               f"eval mode (accuracy {acc:.1%}) while the training accuracy was {train_accuracy:.1%}: a "
               "collapsed model (eval-mode statistics disagree with training)")
        if warn_only:
            log(f"warning: {msg}")
        else:
            raise TrainingError(f"{msg}; the run is not saved as finished")
    return {"share": share, "accuracy": acc}


def check_trained_model(model: nn.Module, train: Any, history: list[dict[str, float]], lr: float | None = None,
                        **predict_kwargs: Any) -> None:
    """Both checks for a recipe's trained ``model`` on its ``train`` ImageArrays (see the module doc)."""
    check_finite_weights(model, lr)
    if history and "accuracy" in history[-1]:
        from cnnlab.evaluation.predict import predict_logits

        check_not_collapsed(model, train.x, train.y, history[-1]["accuracy"], class_names=train.class_names,
                            predict=lambda m, xs: predict_logits(m, xs, **predict_kwargs))
