"""`cnnlab report RUN_DIR`: everything the study showed about one model, in one HTML file.

:func:`write_run_report` reloads the run's data and model, evaluates it again on the test split
(the validation split when the source has no test split), draws every figure as a PNG in the
output folder, and writes ``report.html`` (figures embedded, opens offline), ``report.json``
(the numbers), the error analysis (``errors.png``: the 20 images with the lowest probability for
their true class; ``errors.csv``: the same list, see error_analysis.py) and ``label_errors.csv``
(confidently wrong predictions) beside them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from cnnlab.errors import ModelError
from cnnlab.training.rundir import RunDir
from cnnlab.utils.io import atomic_write_json, atomic_write_text

REPORT_DIR = "report"


def _data_summary(prep: Any) -> dict[str, Any]:
    from cnnlab.data.dataset import DatasetBundle
    from cnnlab.data.inspect import summarize

    bundle = DatasetBundle(prep.bundle.name, prep.train, prep.test, prep.val, dict(prep.bundle.info))
    return summarize(bundle)


def _set_trainable_as_trained(model: Any, cfg: Any) -> None:
    """Mark the base frozen / partly trainable as it was at the end of training (for the summary)."""
    if not hasattr(model, "set_base_trainable"):
        return
    ft = getattr(cfg.train, "finetune", None)
    if ft is not None:
        model.set_base_trainable(True, ft.unfreeze_last)
    elif getattr(cfg.model, "freeze_base", False):
        model.set_base_trainable(False)
    elif getattr(cfg.model, "unfreeze_last", None) is not None:
        model.set_base_trainable(True, cfg.model.unfreeze_last)


def _model_summary(model: Any, input_size: int) -> dict[str, Any]:
    from cnnlab.models.summary import count_flops, count_parameters, layer_table

    layers = layer_table(model, input_size)
    for row in layers:
        row["output_shape"] = list(row["output_shape"]) if row["output_shape"] else None
    return {
        "arch": model.spec.arch,
        "input_size": input_size,
        "parameters": count_parameters(model),
        "backbone_parameters": count_parameters(model.backbone),
        "flops": count_flops(model, input_size),
        "layers": layers,
    }


def _training_summary(history: list[dict[str, float]], metrics: dict[str, Any]) -> dict[str, Any]:
    from cnnlab import figures

    b = figures.best_epoch(history)
    o = figures.overfitting_epoch(history)
    epochs = [int(h.get("epoch", i + 1)) for i, h in enumerate(history)]
    return {
        "epochs_run": len(history),
        "best_epoch": metrics.get("best_epoch") or (epochs[b] if b is not None else None),
        "best_val_loss_epoch": epochs[b] if b is not None else None,
        "overfitting_from_epoch": epochs[o] if o is not None else None,
        "stopped_early": metrics.get("stopped_early"),
        "stop_reason": metrics.get("stop_reason", ""),
        "train_seconds": metrics.get("train_seconds"),
        "history": history,
    }


def _calibration_summary(metrics: dict[str, Any], card: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """How the run was calibrated: {"off": True} when calibration was turned off (train.calibrate:
    false), the figures metrics.json holds when a temperature was fitted, else {} (no validation split)."""
    if card.get("calibration") == "off" or not getattr(cfg.train, "calibrate", True):
        return {"off": True, "temperature": None}
    cal = metrics.get("calibration") or {}
    return dict(cal) if isinstance(cal.get("temperature"), (int, float)) else {}


def _reliability_before_after(probs: np.ndarray, y: np.ndarray, ev: dict[str, Any], temperature: float,
                              out_dir: Path) -> Path:
    """The reliability diagram before the temperature (the probabilities recovered from the calibrated
    ones, cnnlab.evaluation.calibration.uncalibrated) beside the one after it (this evaluation's)."""
    import torch

    from cnnlab import figures
    from cnnlab.evaluation.calibration import uncalibrated
    from cnnlab.evaluation.metrics import expected_calibration_error

    raw = torch.as_tensor(uncalibrated(probs, float(temperature)))
    ece_before, bins_before = expected_calibration_error(raw, torch.as_tensor(np.asarray(y), dtype=torch.long))
    return figures.reliability_before_after(bins_before, ev["calibration_bins"], ece_before, ev["ece"],
                                            float(temperature), out_dir / "reliability_temperature.png")


def write_run_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    n_worst: int = 20,
    data: Any = None,
    weights: str = "final",
    label_error_confidence: float = 0.9,
    latency_runs: int = 30,
    log: Callable[[str], None] = print,
) -> Path:
    """Write the run's HTML report (and its PNGs, report.json, label_errors.csv); return the HTML path.

    ``out`` defaults to ``RUN_DIR/report``. ``data`` replaces the run's data source (needed when
    the run trained on a DataFrame). ``weights``: "final" or "best" (the keep-best checkpoint).
    """
    from cnnlab import figures
    from cnnlab.predictor import ImagePredictor
    from cnnlab.reports import gallery
    from cnnlab.evaluation.error_analysis import write_error_analysis
    from cnnlab.reports.run_report_html import render
    from cnnlab.reports.speed import batch1_latency, speed_summary
    from cnnlab.training.orchestrate import prepare_data

    rd = RunDir(run_dir)
    cfg = rd.read_config()
    if not (rd / "model.safetensors").is_file():
        raise ModelError(f"{rd.path}: no model.safetensors yet; the run has not finished "
                         f"(finish it with `cnnlab train --resume {rd.path}`)")
    if n_worst < 0:
        raise ModelError(f"n_worst must be 0 or more, got {n_worst}")
    out_dir = Path(out) if out is not None else rd.path / REPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    pred = ImagePredictor.load(rd.path, weights=weights)
    metrics = rd.read_metrics()
    history = rd.read_history()

    log(f"report: loading data ({cfg.data.source})")
    prep = prepare_data(cfg, pred.load_data(data))  # decoded at the predictor's size, split as in training
    split_name = "test" if prep.test is not None else "val"
    split = prep.test if prep.test is not None else prep.val
    if split is None or len(split) == 0:
        raise ModelError(f"{rd.path}: the data source has neither a test nor a validation split to report on")

    rep: dict[str, Any] = {"run_dir": str(rd.path), "name": cfg.name, "description": cfg.description,
                           "config_yaml": cfg.to_yaml(), "weights": weights, "metrics": metrics,
                           "eval_split": split_name, "figures": {}}
    rep["data"] = _data_summary(prep)
    tr = prep.train
    rep["figures"]["example_images"] = str(figures.example_images(
        tr.x, tr.y, tr.class_names, out_dir / "example_images.png", dpi=150))

    model = pred.model
    input_size = pred.input_size or tr.image_size[0]
    log("report: model summary")
    _set_trainable_as_trained(model, cfg)
    rep["model"] = _model_summary(model, int(input_size))

    rep["training"] = _training_summary(history, metrics)
    if history:
        rep["figures"]["curves"] = str(figures.learning_curves(history, out_dir / "curves.png", title=cfg.name))

    log(f"report: evaluating on {len(split):,} {split_name} images")
    evaluation = pred.evaluate_details(split)
    ev, y, eval_seconds = evaluation.report, evaluation.y, evaluation.seconds
    rep["evaluation"] = ev
    names = pred.class_names
    rep["figures"]["confusion_matrix"] = str(figures.confusion_heatmap(
        np.array(ev["confusion_matrix"]), names, out_dir / "confusion_matrix.png"))
    rep["figures"]["per_class_recall"] = str(figures.per_class_recall(
        ev["per_class"], out_dir / "per_class_recall.png", ev.get("balanced_accuracy")))
    rep["figures"]["reliability"] = str(figures.reliability_diagram(
        ev["calibration_bins"], ev["ece"], out_dir / "reliability.png"))
    rep["calibration"] = _calibration_summary(metrics, pred.card, cfg)
    if rep["calibration"].get("temperature") is not None:  # the temperature's figures: before and after it
        rep["figures"]["reliability_temperature"] = str(_reliability_before_after(
            evaluation.probabilities, y, ev, pred.temperature, out_dir))  # the temperature the evaluation applied

    probs = evaluation.probabilities
    if n_worst > 0:
        ea = write_error_analysis(probs, y, split.x, names, out_dir, k=n_worst, split=split_name, paths=split.paths,
                                  explain=lambda i: pred.explain(split.x[i]))  # each beside its Grad-CAM overlay
        rep["figures"]["errors"] = str(ea["png"])
        rep["error_analysis"] = {"png": str(ea["png"]), "csv": str(ea["csv"]), "k": n_worst, "split": split_name}
        rep["worst"] = [{"index": r["index"], "image": r["path"] or f"#{r['index']}", "true_label": r["true"],
                         "predicted_label": r["predicted"], "confidence": r["p_pred"], "p_true": r["p_true"]}
                        for r in ea["rows"]]
    from cnnlab.reports.explain_gallery import PNG_NAME, write_gallery

    log("report: heatmaps of a few correct and wrong predictions per class")
    rep["explanations"] = write_gallery(split.x, probs, y, names, lambda i: pred.explain(split.x[i]),
                                        out_dir / PNG_NAME)
    errors = gallery.label_error_rows(probs, y, names, split.paths, label_error_confidence)
    gallery.write_csv(errors, out_dir / "label_errors.csv", gallery.LABEL_ERROR_COLUMNS)
    rep["label_errors"] = {"min_confidence": label_error_confidence, "count": len(errors), "rows": errors,
                           "csv": str(out_dir / "label_errors.csv")}

    log("report: measuring inference speed")
    latency = batch1_latency(model, split.x, runs=latency_runs, device=pred.device, dtype=pred.dtype)
    rep["speed"] = speed_summary(metrics.get("train_images_per_second"), len(split), eval_seconds,
                                 pred.batch_size, latency, pred.device, metrics.get("machine"))

    html_path = out_dir / "report.html"
    atomic_write_text(html_path, render(rep))
    atomic_write_json(out_dir / "report.json", {k: v for k, v in rep.items() if k != "config_yaml"})
    log(f"report: {html_path}")
    return html_path
