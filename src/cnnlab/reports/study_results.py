"""`cnnlab study report STUDY.yaml`: the study's results side by side with the seed study's.

Writes into ``OUT/<study name>/report/``: ``comparison.md`` and ``comparison.csv`` (one row per
experiment: accuracy, loss, epochs run, time, parameters, the seed study's accuracy),
``curves-<family>.png`` (learning curves overlaid), ``tree-<family>.png`` / ``.svg`` (the
summary diagram) and ``report.html`` holding all of them (figures embedded, opens offline).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from cnnlab.reports import html as h
from cnnlab.reports.study import Experiment, Family, Study, load_study
from cnnlab.reports.tree import TreeNode, draw_tree, wrap
from cnnlab.utils.io import atomic_write_json, atomic_write_text

HEADERS = {"family": "family", "experiment": "model", "change": "change", "state": "state",
           "epochs_run": "epochs", "train_samples": "train images", "accuracy": "accuracy %",
           "best_checkpoint_accuracy": "best ckpt %", "seed_accuracy": "seed %", "delta_vs_seed": "delta",
           "loss": "loss", "train_seconds": "train s", "parameters": "parameters"}
DIGITS = {"loss": 4, "train_seconds": 1, "accuracy": 2, "best_checkpoint_accuracy": 2, "seed_accuracy": 2,
          "delta_vs_seed": 2}
COLUMNS = ["family", "experiment", "change", "state", "epochs_run", "train_samples", "accuracy",
           "best_checkpoint_accuracy", "seed_accuracy", "delta_vs_seed", "loss", "train_seconds", "parameters"]


def experiment_result(study: Study, exp: Experiment, out: str | Path | None = None) -> dict[str, Any]:
    """What one experiment's run directory says (accuracies in %), plus the seed study's numbers."""
    from cnnlab.training.rundir import RunDir

    rd = RunDir(study.run_dir(exp, out))
    row: dict[str, Any] = {"family": exp.family, "experiment": exp.id, "key": exp.key, "change": exp.change,
                           "seed_accuracy": exp.seed_accuracy, "seed_best_accuracy": exp.seed_best_accuracy,
                           "run_dir": str(rd.path), "history": rd.read_history() if rd.path.is_dir() else []}
    if rd.is_finished():
        row["state"] = "finished"
    elif (rd.path / "config.yaml").is_file():
        row["state"] = "partial"
    else:
        row["state"] = "not run" if exp.available else "missing config"
    metrics = rd.read_metrics() if rd.path.is_dir() else {}
    split = "test" if "test" in metrics else "val" if "val" in metrics else None
    if split:
        row["split"] = split
        row["accuracy"] = round(100 * metrics[split]["accuracy"], 2)
        row["loss"] = round(metrics[split]["loss"], 4)
        best = metrics.get(f"{split}_best_checkpoint")
        row["best_checkpoint_accuracy"] = round(100 * best["accuracy"], 2) if best else None
        if exp.seed_accuracy is not None:
            row["delta_vs_seed"] = round(row["accuracy"] - exp.seed_accuracy, 2)
    row["epochs_run"] = metrics.get("epochs_run", len(row["history"]) or None)
    row["train_seconds"] = metrics.get("train_seconds")
    row["train_samples"] = metrics.get("train_samples")
    card = rd.path / "model.json"
    if card.is_file():
        row["parameters"] = json.loads(card.read_text()).get("parameters", {}).get("total")
    return row


def _acc_text(row: dict[str, Any]) -> str:
    if row.get("accuracy") is None:
        ours = {"partial": "cnnlab: running", "missing config": "cnnlab: no config yet"}.get(row["state"],
                                                                                          "cnnlab: not run")
    else:
        ours = f"cnnlab {row['accuracy']:.2f}%"
        if row.get("best_checkpoint_accuracy") is not None:
            ours += f" (best {row['best_checkpoint_accuracy']:.2f}%)"
        if row.get("epochs_run"):
            ours += f", {row['epochs_run']} ep"
    seed = ""
    if row.get("seed_accuracy") is not None:
        seed = f"seed {row['seed_accuracy']:.2f}%"
        if row.get("seed_best_accuracy") is not None:
            seed += f" (best {row['seed_best_accuracy']:.2f}%)"
    return ours + ("\n" + seed if seed else "")


def _node_state(row: dict[str, Any]) -> str:
    if row["state"] == "finished":
        better = row.get("seed_accuracy") is not None and row["accuracy"] >= row["seed_accuracy"]
        return "better" if better else "finished"
    return "partial" if row["state"] == "partial" else "not run"


def family_tree(family: Family, rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """The family's summary diagram, PNG and SVG."""
    nodes = [TreeNode(r["experiment"], e.parent,
                      f"Model {r['experiment']}\n{wrap(r['change'])}\n{_acc_text(r)}".replace("\n\n", "\n"),
                      _node_state(r))
             for e, r in zip(family.experiments, rows)]
    root = f"{family.title}\n{wrap(family.architecture, 44)}".strip()
    foot = ("cnnlab's test accuracy beside the seed study's; green: cnnlab >= seed; "
            "dashed: not run (yet)")
    return draw_tree(root, nodes, out_dir / f"tree-{family.name}.png", out_dir / f"tree-{family.name}.svg",
                     footnote=foot)


def family_curves(family: Family, rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Validation (solid) and training (dashed) loss and accuracy of every experiment, overlaid."""
    from cnnlab.figures import save, subplots

    runs = [r for r in rows if r["history"]]
    if not runs:
        return None
    fig, axes = subplots(1, 2, figsize=(12, 4.2))
    for k, r in enumerate(runs):
        color = f"C{k % 10}"
        ep = [int(hh.get("epoch", i + 1)) for i, hh in enumerate(r["history"])]
        for ax, key in ((axes[0], "loss"), (axes[1], "accuracy")):
            if any(f"val_{key}" in hh for hh in r["history"]):
                ax.plot(ep, [hh.get(f"val_{key}") for hh in r["history"]], "-o", ms=3, color=color,
                        label=f"{r['experiment']} validation")
            ax.plot(ep, [hh.get(key) for hh in r["history"]], "--", lw=1, color=color, alpha=0.7,
                    label=f"{r['experiment']} training")
    for ax, key in ((axes[0], "loss"), (axes[1], "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"{family.title}: learning curves (solid: validation, dashed: training)")
    fig.tight_layout()
    return save(fig, path)


def _fmt_cell(v: Any, column: str = "") -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.{DIGITS.get(column, 2)}f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v).replace("|", "\\|")


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(HEADERS.get(c, c) for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt_cell(r.get(c), c) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def study_report(path: str | Path, *, out: str | Path | None = None, report_dir: str | Path | None = None,
                 log: Callable[[str], None] = print) -> Path:
    """Write the study report (see the module docstring); returns the HTML file's path."""
    from cnnlab.reports.gallery import write_csv

    study = load_study(path)
    dest = Path(report_dir) if report_dir is not None else study.out_dir(out) / "report"
    dest.mkdir(parents=True, exist_ok=True)
    all_rows: list[dict[str, Any]] = []
    sections = []
    for fam in study.families:
        rows = [experiment_result(study, e, out) for e in fam.experiments]
        all_rows += rows
        png, _svg = family_tree(fam, rows, dest)
        curves = family_curves(fam, rows, dest / f"curves-{fam.name}.png")
        body = h.figure(png, f"Summary diagram of the {fam.title} family (also as tree-{fam.name}.svg).",
                        alt=f"tree-{fam.name}")
        body += h.table(rows, COLUMNS[1:], [HEADERS[c] for c in COLUMNS[1:]], digits=DIGITS)
        body += h.figure(curves, "Learning curves, overlaid.") if curves else h.para("No experiment has run yet.")
        sections.append((f"family-{fam.name}", fam.title, body))
        log(f"study report: {fam.name}: {sum(r['state'] == 'finished' for r in rows)} of {len(rows)} finished")
    md = [f"# Study {study.name}\n\n", f"{study.description}\n\n" if study.description else "",
          "Accuracy on the test split in %; seed: the seed study's result for the same model; "
          "delta: cnnlab minus seed.\n\n",
          markdown_table(all_rows, COLUMNS)]
    for fam in study.families:
        md.append(f"\n![{fam.title}](tree-{fam.name}.png)\n")
    atomic_write_text(dest / "comparison.md", "".join(md))
    write_csv(all_rows, dest / "comparison.csv", COLUMNS)
    atomic_write_json(dest / "summary.json", {"study": study.name, "experiments": [
        {k: v for k, v in r.items() if k != "history"} for r in all_rows]})
    overview = (h.para(study.description) if study.description else "") + h.para(
        "Test accuracy (%) of every experiment beside the seed study's (delta: cnnlab minus seed).")
    overview += h.table(all_rows, COLUMNS, [HEADERS[c] for c in COLUMNS], digits=DIGITS)
    html_text = h.page(f"cnnlab study: {study.name}", [f"study file: {study.path}",
                                                        f"run directories: {study.out_dir(out)}",
                                                        f"written {time.strftime('%Y-%m-%d %H:%M')}"],
                       [("comparison", "Comparison", overview)] + sections)
    html_path = dest / "report.html"
    atomic_write_text(html_path, html_text)
    log(f"study report: {html_path}")
    return html_path
