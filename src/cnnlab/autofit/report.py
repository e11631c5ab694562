"""The fit report: report.md with the plan against what happened, the leaderboard and the
error analysis (errors.png / errors.csv from cnnlab.evaluation.error_analysis, when present)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.utils.io import atomic_write_text


def error_analysis(probs: np.ndarray, y: np.ndarray, images: Any, class_names: list[str], out_dir: Path,
                   split: str, log: Callable[[str], None] = print, paths: list[str] | None = None,
                   explain: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, Any] | None:
    """The 20 images with the lowest probability for their true class (4 x 5 grid + CSV); ``images``:
    the decoded pixels, ``paths``: the files they came from (named in the CSV where supported);
    ``explain``: indices -> heatmaps, drawn beside each image (cnnlab.evaluation.explain)."""
    from cnnlab.evaluation.error_analysis import write_error_analysis

    extra = {"explain": explain} if explain is not None else {}
    return write_error_analysis(probs, y, images, class_names, out_dir, k=20, split=split, paths=paths, **extra)


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, (int, float)) else "-"


def _s(v: Any) -> str:
    return f"{v:.0f} s" if isinstance(v, (int, float)) else "-"


def _worst(w: Any, before: str = "", after: str = "") -> str:
    return f"{before}{w['class']} {_pct(w['recall'])}{after}" if isinstance(w, dict) else ""


def _imbalance(p: dict[str, Any]) -> str:
    counts = p.get("class_counts") or {}
    if not counts:
        return "class counts: -"
    lo, hi = min(counts, key=counts.get), max(counts, key=counts.get)
    return (f"class counts (train): {hi} {counts[hi]:,} most, {lo} {counts[lo]:,} fewest; imbalance ratio "
            f"{p.get('imbalance_ratio', 1.0):.1f}")


def _duplicates(p: dict[str, Any]) -> str:
    d = p.get("duplicates") or {}
    if not d:
        return "duplicates: -"
    return (f"duplicates: {d['exact_pairs']} exact and {d['near_pairs']} near pairs, {d['cross_split_pairs']} of them "
            f"across splits; {d['leaked_train_images']} training images duplicate a validation or test image, "
            f"{d['leaked_train_images_removed']} removed (--drop-leaks)")


def _calibration_off(model_dir: Path) -> bool:
    """Whether the model's card says calibration was turned off (``--no-calibrate``, ``calibrate=False``)."""
    try:
        return json.loads((model_dir / "model.json").read_text(encoding="utf-8")).get("calibration") == "off"
    except (OSError, ValueError):
        return False


def write_report(folder: Path, plan: dict[str, Any], info: dict[str, Any], errors: dict[str, Any] | None) -> Path:
    p = info["profile"]
    lines = [f"# Auto-fit report: {folder.name}", "",
             f"- data: {info.get('data_source')}: {p['count']:,} train, {p['val_count']:,} validation "
             f"({p['validation']}), {p['test_count']:,} test images, {p['num_classes']} classes, decoded at "
             f"{p['image_size']} px{' (mixed sizes)' if p['mixed_sizes'] else ''}",
             f"- preset {info['preset']}, time limit {info['time_limit']:.0f} s, elapsed when this report was "
             f"written **{info['elapsed_seconds']:.1f} s** (overrun {info['overrun']:+.1%}; fit.json has the final "
             f"figure), {plan['precision']} on "
             f"{plan['device']} ({plan['machine']})",
             f"- budget: {info['budget']['note']}" if info.get("budget") else "- budget: -",
             f"- best: **{info['best']}**, validation {_pct(info.get('val_accuracy'))}, test "
             f"{_pct(info.get('test_accuracy'))}; balanced: validation {_pct(info.get('val_balanced_accuracy'))}, "
             f"test {_pct(info.get('test_balanced_accuracy'))}{_worst(info.get('test_worst_class'), ' (worst test class ', ')')}",
             f"- {_imbalance(p)}",
             f"- {_duplicates(p)}",
             f"- selection: {info.get('selection') or 'by validation accuracy'}",
             *[f"- {k}: validated by {cv['method']} cross-validation on {cv['images']} images: {_pct(cv['accuracy'])}"
               f" (95% CI {_pct(cv['ci95'][0])}-{_pct(cv['ci95'][1])}; folds {cv['fold_mean']:.3f} +- "
               f"{cv['fold_std']:.3f})" for k, cv in (info.get("cross_validation") or {}).items()], "",
             "## Plan against what happened", "",
             f"Measuring took {plan['probe_seconds']:.1f} s; {plan['available_seconds']:.0f} s were planned for "
             f"the models, {plan['reserve_seconds']:.0f} s kept for the end.", "",
             "| candidate | speed (img/s) | chosen | planned time | actual time | planned epochs | actual epochs "
             "| predicted val | actual val | test | status / why |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in plan["candidates"]:
        speed = f"{c['images_per_second']:.0f} ({'measured' if c['measured'] else 'estimated'})"
        if c.get("actual_images_per_second"):
            speed += f", ran at {c['actual_images_per_second']:.0f}"
        lines.append(f"| {c['kind']} | {speed} | {'yes' if c['chosen'] else 'no'} | "
                     f"{_s(c['share_seconds']) if c['chosen'] else '-'} | {_s(c['actual_seconds'])} | "
                     f"{c['epochs']:.1f} | {c['actual_epochs'] if c['actual_epochs'] is not None else '-'} | "
                     f"{_pct(c['predicted_val_accuracy'])} | {_pct(c['actual_val_accuracy'])} | "
                     f"{_pct(c['actual_test_accuracy'])} | {c['status']}: {c['why']} |")
    lines += ["", "## Leaderboard", "", "| rank | model | val accuracy | val balanced | test accuracy | test balanced "
              "| worst test class | fit time | epochs | TTA | weight |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in info["leaderboard"]:
        lines.append(f"| {r['rank']} | {r['model']} | {_pct(r['val_accuracy'])} | {_pct(r.get('val_balanced_accuracy'))} "
                     f"| {_pct(r.get('test_accuracy'))} | {_pct(r.get('test_balanced_accuracy'))} | "
                     f"{_worst(r.get('test_worst_class')) or '-'} | "
                     f"{_s(r.get('fit_seconds'))} | {r.get('epochs') or '-'} | {r.get('tta') or '-'} | "
                     f"{r.get('weight') or '-'} |")
    lines += ["", "## Calibration", "", "A temperature fitted on the validation split after training divides every "
              "logit (Guo et al. 2017; argmax unchanged); expected calibration error, 15 bins:", "",
              "| model | temperature | validation ECE before | after | test ECE before | after |", "|---|---|---|---|---|---|"]
    for m in info.get("members") or []:
        try:
            cal = json.loads((folder / m["path"] / "metrics.json").read_text(encoding="utf-8")).get("calibration") or {}
        except (OSError, ValueError):
            cal = {}
        if _calibration_off(folder / m["path"]):
            lines.append(f"| {m['model']} | 1.000 (calibration off) | - | - | - | - |")
        elif cal:
            lines.append(f"| {m['model']} | {cal.get('temperature', 1.0):.3f} | " + " | ".join(
                f"{cal[k]:.4f}" if isinstance(cal.get(k), float) else "-"
                for k in ("val_ece_before", "val_ece_after", "test_ece_before", "test_ece_after")) + " |")
    lines += ["", "## Error analysis", ""]
    if errors:
        split = errors.get("split", "test")
        lines += [f"The 20 {split} images with the lowest probability for their true class (candidate label "
                  "errors): `errors.csv`.", "", "![errors](errors.png)"]
    else:
        lines.append("Not written (cnnlab.evaluation.error_analysis is not available).")
    path = folder / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
