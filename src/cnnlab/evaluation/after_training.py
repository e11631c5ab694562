"""The trainer's evaluator: a freshly trained model scored on the test split (else validation).

Written once, with the predictor's own inference (``predictor_cls`` is
:class:`cnnlab.predictor.ImagePredictor`, passed in so that this module never imports it back);
:func:`cnnlab.predictor.evaluate_after_training` is the evaluator the trainers are given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnlab.config import ExperimentConfig
from cnnlab.data.dataset import ImageArrays
from cnnlab.models.io import model_card
from cnnlab.training.rundir import RunDir


@dataclass
class Evaluation:
    """An evaluation's report with what it was computed from (for galleries and label errors)."""

    report: dict[str, Any]
    probabilities: np.ndarray  # (N, classes)
    y: np.ndarray  # true labels as the model's class indices
    images: ImageArrays
    seconds: float


def evaluate_fresh(predictor_cls: Any, result: Any, prep: Any, cfg: ExperimentConfig, rd: RunDir, *, progress: bool,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """The trainer's evaluator: the fresh model on the test split (else validation) -> metrics.json entries."""
    from cnnlab import figures
    from cnnlab.evaluation.explain import heatmaps
    from cnnlab.models.io import load_weights
    from cnnlab.reports.error_analysis import run_error_analysis
    from cnnlab.training.orchestrate import card_extra, compile_features

    split = prep.test if prep.test is not None else prep.val
    split_name = "test" if prep.test is not None else "val"
    card = model_card(result.model, card_extra(cfg, prep, result))
    pred = predictor_cls.from_model(result.model, config=cfg, card=card, path=rd.path)
    cached = "feature_cache" in result.extra and cfg.train.finetune is None
    ev = pred.evaluate_details(split, feature_cache=cached, compile=compile_features(cfg), progress=progress, log=log)
    out: dict[str, Any] = {split_name: _summary(ev.report),
                           "inference_images_per_second": round(len(split) / max(ev.seconds, 1e-9), 1)}
    if (rd / "best.safetensors").is_file():
        import copy

        best = copy.deepcopy(result.model)
        load_weights(best, rd / "best.safetensors")
        bpred = predictor_cls.from_model(best, config=cfg, card=card, path=rd.path, weights="best")
        out[f"{split_name}_best_checkpoint"] = _summary(bpred.evaluate(split))
    report = ev.report
    out["error_analysis"] = run_error_analysis(ev.probabilities, ev.y, split, report["class_names"], rd.path,
                                               split_name,  # the study's 20 lowest-p(true) images
                                               explain=lambda i: heatmaps(result.model, split.x[i],  # beside their
                                                                          ev.probabilities[i].argmax(1))[0])  # Grad-CAM
    figures.confusion_heatmap(np.array(report["confusion_matrix"]), report["class_names"],
                              rd.figures / "confusion_matrix.png")
    log(f"{split_name} accuracy: {report['accuracy']:.4f} (top-5 {report['top5_accuracy']:.4f}, "
        f"loss {report['loss']:.4f}) on {len(split):,} images")
    return out


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report[k] for k in ("count", "loss", "accuracy", "top5_accuracy", "macro_f1", "ece")}
