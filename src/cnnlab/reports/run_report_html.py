"""The run report's HTML: one section per question a reader asks about a trained model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cnnlab.reports import html as h


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, (int, float)) else "n/a"


def _worst(w: Any) -> str:
    return f"{w['class']}: {_pct(w['recall'])}" if isinstance(w, dict) else "n/a"


def _overview(rep: dict[str, Any]) -> str:
    ev, tr = rep["evaluation"], rep["training"]
    items = [
        (f"{rep['eval_split']} accuracy", _pct(ev["accuracy"])),
        (f"{rep['eval_split']} loss", f"{ev['loss']:.4f}"),
        ("top-5 accuracy", _pct(ev["top5_accuracy"])),
        ("balanced accuracy", _pct(ev.get("balanced_accuracy"))),
        ("macro F1", f"{ev['macro_f1']:.4f}"),
        ("worst class recall", _worst(ev.get("worst_class"))),
        ("ECE", f"{ev['ece']:.4f}"),
        ("epochs run", str(tr["epochs_run"])),
        ("training time", f"{tr['train_seconds']:.1f} s" if tr.get("train_seconds") is not None else "n/a"),
        ("parameters", f"{rep['model']['parameters']['total']:,}"),
    ]
    body = h.kpis(items)
    if rep.get("description"):
        body += h.para(rep["description"])
    best = rep["metrics"].get(f"{rep['eval_split']}_best_checkpoint")
    if best:
        body += h.note(f"Keep-best checkpoint (best.safetensors): {rep['eval_split']} accuracy "
                       f"{_pct(best['accuracy'])} (this report uses the {rep['weights']} weights).")
    return body + h.details("configuration (config.yaml)", h.pre(rep["config_yaml"]))


def _data(rep: dict[str, Any]) -> str:
    d = rep["data"]
    splits = [{"split": name, "images": s["images"], "shape": " x ".join(str(v) for v in s["shape"]),
               "pixel range": f"{s['pixel_min']}..{s['pixel_max']}"} for name, s in d["splits"].items()]
    counts = [{"class": c, **{name: s["class_counts"].get(c, 0) for name, s in d["splits"].items()}}
              for c in d["classes"]]
    total = {"class": "total", **{name: s["images"] for name, s in d["splits"].items()}}
    body = h.para(f"Source: {d['name']} with {len(d['classes'])} classes, as the run used it "
                  "(after its validation split and training-subset limit).")
    body += h.table(splits) + "<h3>Images per class</h3>" + h.table(counts, total=total)
    if d.get("skipped"):
        body += h.warning(f"{d['skipped']} unreadable files were skipped.")
    return body + h.figure(rep["figures"]["example_images"],
                           "Example images: the first 5 training images of each class.")


def _model(rep: dict[str, Any]) -> str:
    m = rep["model"]
    p, bp = m["parameters"], m["backbone_parameters"]
    rows = [
        {"what": "architecture", "value": m["arch"]},
        {"what": "input size", "value": f"{m['input_size']} x {m['input_size']}"},
        {"what": "total parameters", "value": p["total"]},
        {"what": "trainable parameters", "value": p["trainable"]},
        {"what": "non-trainable parameters", "value": p["non_trainable"]},
        {"what": "Keras's total (+ BatchNorm statistics)", "value": p["keras_total"]},
        {"what": "backbone parameters", "value": bp["total"]},
        {"what": "forward FLOPs per image", "value": f"{m['flops'] / 1e6:,.1f} M"},
    ]
    layers = [{"layer": r["name"], "type": r["type"],
               "output shape": "(" + ", ".join(["None"] + [str(v) for v in r["output_shape"][1:]]) + ")"
               if r["output_shape"] else "",
               "parameters": r["parameters"],
               "trainable": "" if r["trainable"] is None else ("yes" if r["trainable"] else "no")}
              for r in m["layers"]]
    total = {"layer": "total", "parameters": p["total"], "trainable": f"{p['trainable']:,} trainable"}
    table = h.table(layers, ["layer", "type", "output shape", "parameters", "trainable"], total=total)
    return (h.table(rows, headers=["", ""]) +
            h.details(f"layers ({len(layers)} leaf modules, Keras-like summary)", table, open_=len(layers) <= 60))


def _training(rep: dict[str, Any]) -> str:
    t = rep["training"]
    if "curves" not in rep["figures"]:
        return h.para("No training history was recorded.")
    body = ""
    if t["overfitting_from_epoch"] is not None:
        body += h.warning(f"Overfitting: from epoch {t['overfitting_from_epoch']} the validation loss rises "
                          "while the training loss falls (shaded red in the loss plot). Regularisation "
                          "(dropout, L2, augmentation) or early stopping would help.")
    facts = [f"{t['epochs_run']} epochs run"]
    if t.get("best_epoch"):
        facts.append(f"best epoch {t['best_epoch']} (by the run's checkpoint or early-stopping monitor)")
    if t.get("best_val_loss_epoch"):
        facts.append(f"lowest validation loss at epoch {t['best_val_loss_epoch']} (green line)")
    if t.get("stop_reason"):
        facts.append(t["stop_reason"])
    body += h.para("; ".join(facts) + ".")
    body += h.figure(rep["figures"]["curves"], "Loss and accuracy per epoch, training vs validation.")
    cols = [c for c in ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds")
            if t["history"] and c in t["history"][0]]
    rows = [{c: (int(r[c]) if c == "epoch" else r[c]) for c in cols} for r in t["history"]]
    return body + h.details("history (history.csv)", h.table(rows, cols))


def _evaluation(rep: dict[str, Any]) -> str:
    ev = rep["evaluation"]
    body = h.para(f"{ev['count']:,} {rep['eval_split']} images: accuracy {_pct(ev['accuracy'])}, "
                  f"balanced accuracy {_pct(ev.get('balanced_accuracy'))} (the mean per-class recall), "
                  f"top-5 {_pct(ev['top5_accuracy'])}, loss {ev['loss']:.4f}, macro F1 {ev['macro_f1']:.4f}, "
                  f"worst class {_worst(ev.get('worst_class'))}.")
    if "per_class_recall" in rep["figures"]:
        body += h.figure(rep["figures"]["per_class_recall"], "Recall per class, lowest first (support in "
                         "brackets); the dashed line is the balanced accuracy.")
    body += h.figure(rep["figures"]["confusion_matrix"], "Confusion matrix (rows: true class; colour: share "
                     "of the true class; numbers: counts).")
    body += "<h3>Per-class precision, recall and F1</h3>"
    return body + h.table(ev["per_class"], ["class", "precision", "recall", "f1", "support"])


def _errors(rep: dict[str, Any]) -> str:
    body = ""
    if "errors" in rep["figures"]:
        n = len(rep.get("worst", []))
        body += h.figure(rep["figures"]["errors"],
                         f"The {n} {rep['eval_split']} images with the lowest probability for their true class: "
                         "true label, predicted label and its confidence (red: wrong); beside each, where the "
                         "model looked for its prediction (Grad-CAM, when the model has a feature map for it).")
        body += (f'<p>The same images as a table: <a href="{h.esc(Path(rep["error_analysis"]["csv"]).name)}">'
                 f'{h.esc(Path(rep["error_analysis"]["csv"]).name)}</a> (index, path, true, predicted, p_true, '
                 "p_pred; candidates for label errors).</p>")
    le = rep["label_errors"]
    body += "<h3>Likely label errors</h3>"
    body += h.para(f"{le['count']} images are predicted wrong with confidence >= {le['min_confidence']:g}; "
                   "some may be wrongly labelled rather than misclassified (listed in label_errors.csv).")
    if le["rows"]:
        body += h.table(le["rows"][:20], ["image", "true_label", "predicted_label", "confidence", "p_true"])
    return body


def _explanations(rep: dict[str, Any]) -> str:
    info = rep.get("explanations")
    if not info:
        return h.para("No heatmaps: this model has no feature map larger than 1x1 for Grad-CAM "
                      "(`cnnlab explain --method occlusion` works on any model).")
    return h.figure(info["png"], f"Grad-CAM for the predicted class (red: high) on {info['correct']} correct and "
                    f"{info['wrong']} wrong {rep['eval_split']} predictions, up to {info['per_class']} of each per "
                    "class (a row per true class: most confident first; red titles: wrong). "
                    "`cnnlab explain RUN IMAGE` draws one for any image.")


def _calibration(rep: dict[str, Any]) -> str:
    ev = rep["evaluation"]
    rows = [{"confidence bin": f"{b['lo']:.2f}-{b['hi']:.2f}", "images": b["count"],
             "accuracy": b["accuracy"], "mean confidence": b["confidence"]} for b in ev["calibration_bins"]
            if b["count"]]
    cal = rep.get("calibration") or {}
    body = h.para(f"Expected calibration error (15 equal-width bins): {ev['ece']:.4f}. A calibrated model's "
                  "bars follow the diagonal; bars below it mean overconfidence.")
    if cal.get("off"):
        body += h.note("Calibration was off for this run (train.calibrate: false, --no-calibrate): no temperature "
                       "was fitted after training; the probabilities are the model's own (temperature 1.0).")
    elif "reliability_temperature" in rep["figures"]:
        body += h.figure(rep["figures"]["reliability_temperature"],
                         f"Reliability before and after the temperature T = {cal['temperature']:.3f} fitted on the "
                         "validation split after training (Guo et al. 2017; the logits are divided by T, so the "
                         f"predicted labels are unchanged), on these {rep['eval_split']} images.")
    return (body + h.figure(rep["figures"]["reliability"], "Reliability diagram.") +
            h.details("calibration bins", h.table(rows)))


def _speed(rep: dict[str, Any]) -> str:
    s = rep["speed"]
    rows = [
        {"what": "training throughput (median epoch)", "value":
            f"{s['train_images_per_second']:,.1f} images/s" if s["train_images_per_second"] else "n/a"},
        {"what": f"inference throughput (batch {s['inference_batch_size']}, {s['inference_images']:,} images)",
         "value": f"{s['inference_images_per_second']:,.1f} images/s" if s["inference_images_per_second"] else "n/a"},
        {"what": f"latency at batch 1 (median of {s['latency_runs']})",
         "value": f"{s['latency_batch1_median_ms']:.2f} ms" if s["latency_batch1_median_ms"] is not None else "n/a"},
        {"what": "latency at batch 1 (90th percentile)",
         "value": f"{s['latency_batch1_p90_ms']:.2f} ms" if s["latency_batch1_p90_ms"] is not None else "n/a"},
        {"what": "device (inference, this report)", "value": s["device"]},
        {"what": "machine (training)", "value": s.get("machine") or "n/a"},
    ]
    return h.table(rows, headers=["", ""])


def render(rep: dict[str, Any]) -> str:
    """The report page for the mapping :func:`cnnlab.reports.run_report.write_run_report` builds."""
    sections = [
        ("overview", "Overview", _overview(rep)),
        ("data", "Data", _data(rep)),
        ("model", "Model", _model(rep)),
        ("training", "Training", _training(rep)),
        ("evaluation", "Evaluation", _evaluation(rep)),
        ("errors", "Worst mistakes", _errors(rep)),
        ("explanations", "Where the model looks", _explanations(rep)),
        ("calibration", "Calibration", _calibration(rep)),
        ("speed", "Speed", _speed(rep)),
    ]
    sub = [f"run directory: {rep['run_dir']}",
           f"report written {time.strftime('%Y-%m-%d %H:%M')} with the {rep['weights']} weights"]
    return h.page(f"cnnlab report: {rep['name']}", sub, sections)
