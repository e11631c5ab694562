"""The trainer's evaluator: a freshly trained model calibrated on validation and scored on test.

:func:`evaluate_after_training` is the evaluator the trainers are given (``orchestrate.train(...,
evaluator=)``): it fits the temperature on the validation split (:mod:`cnnlab.evaluation.calibration`,
Guo et al. 2017), writes it into the run's model card, then scores the model on the test split
(else validation) through the one inference path (:class:`cnnlab.inference.InferenceModel`), so
metrics.json holds what ``cnnlab evaluate`` and the server will give for the same images.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from cnnlab.config import ExperimentConfig
from cnnlab.evaluation.calibration import ece, fit_temperature, uncalibrated
from cnnlab.evaluation.metrics import SUMMARY_KEYS
from cnnlab.inference.model import InferenceModel
from cnnlab.models.io import model_card
from cnnlab.training.rundir import RunDir



def fresh_inference(result: Any, prep: Any, cfg: ExperimentConfig, rd: RunDir, *, calibrate: bool = True,
                    log: Callable[[str], None] = print
                    ) -> tuple[InferenceModel, torch.Tensor | None, dict[str, Any]]:
    """The freshly trained model's inference, its temperature fitted on the validation split.

    Returns (inference, the validation split's raw logits, calibration figures). The temperature
    is fitted on cached features when there are (training stored them): it is one fitted number,
    stored in the card and applied alike on every path afterwards. The raw logits are given only
    when they came from the whole model (no feature cache), i.e. exactly what evaluating the
    validation split would compute again: pass them to ``evaluate_details(raw_logits=...)``."""
    from cnnlab.training.orchestrate import card_extra

    card = model_card(result.model, card_extra(cfg, prep, result))
    inf = InferenceModel.from_model(result.model, config=cfg, card=card, path=rd.path)
    cached = "feature_cache" in result.extra and cfg.train.finetune is None
    calibration: dict[str, Any] = {}
    val_raw = None
    if calibrate and cfg.train.calibrate and prep.val is not None and len(prep.val) >= 2:
        y_val = np.asarray(prep.val.y)
        t0 = time.perf_counter()
        raw = inf.raw_logits(prep.val.x, feature_cache=cached, compile=False, log=log)
        seconds = time.perf_counter() - t0
        val_raw = None if cached else raw
        t, before, after = fit_temperature(raw, y_val)
        calibration = {"temperature": t, "val_ece_before": before, "val_ece_after": after, "count": len(y_val),
                       "seconds": round(seconds, 3)}
        card["temperature"] = t
        result.extra["temperature"] = t  # orchestrate's card_extra writes it into model.json
        log(f"calibration: temperature {t:.3f} on {len(y_val):,} validation images "
            f"(ECE {before:.4f} -> {after:.4f})")
    elif not cfg.train.calibrate:
        log("calibration: off (train.calibrate: false); temperature 1.0")
    return inf, val_raw, calibration


def evaluate_after_training(result: Any, prep: Any, cfg: ExperimentConfig, rd: RunDir, *, progress: bool,
                            log: Callable[[str], None]) -> dict[str, Any]:
    """The fresh model on the test split (else validation) -> metrics.json entries."""
    from cnnlab import figures
    from cnnlab.evaluation.error_analysis import run_error_analysis
    from cnnlab.evaluation.explain import heatmaps
    from cnnlab.models.io import load_weights

    split = prep.test if prep.test is not None else prep.val
    split_name = "test" if prep.test is not None else "val"
    inf, val_raw, calibration = fresh_inference(result, prep, cfg, rd, log=log)
    # The reported figures come from the path every later caller takes (the whole model, eager):
    # cached or compiled features round differently in bf16 and would report other numbers.
    ev = inf.evaluate_details(split, where=split_name, split_name=split_name, progress=progress, log=log,
                              raw_logits=val_raw if split_name == "val" else None,
                              raw_seconds=calibration.get("seconds"))
    out: dict[str, Any] = {split_name: summary(ev.report),
                           "inference_images_per_second": round(len(split) / max(ev.seconds, 1e-9), 1),
                           "inference": {"precision": ev.report["precision"], "tta": ev.report["tta"],
                                         "micro_batch": inf.micro_batch}}
    if calibration:
        y = np.asarray(ev.y)
        calibration[f"{split_name}_ece_before"] = ece(uncalibrated(ev.probabilities, calibration["temperature"]), y)
        calibration[f"{split_name}_ece_after"] = float(ev.report["ece"])
        out["calibration"] = calibration
    if (rd / "best.safetensors").is_file():
        best = copy.deepcopy(result.model)
        load_weights(best, rd / "best.safetensors")
        binf = InferenceModel.from_model(best, config=cfg, card=inf.card, path=rd.path, weights="best")
        out[f"{split_name}_best_checkpoint"] = summary(binf.evaluate_details(split, where=split_name).report)
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


def summary(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report[k] for k in SUMMARY_KEYS if k in report}
