"""The leaderboard: one row per model (and the ensemble), best validation figure first (validation
accuracy, or balanced validation accuracy on imbalanced data: autofit/selection.py)."""

from __future__ import annotations

import csv
import io
from typing import Any

from cnnlab.utils.io import atomic_write_text, csv_safe_rows

COLUMNS = ("model", "kind", "val_accuracy", "test_accuracy", "val_balanced_accuracy", "test_balanced_accuracy",
           "test_worst_class", "fit_seconds", "epochs", "tta", "parameters", "weight")


def rank(rows: list[dict[str, Any]], by: str = "val_accuracy") -> list[dict[str, Any]]:
    """Rows sorted by ``by`` (higher first; ties: the faster fit first), ranked from 1."""
    out = sorted((dict(r) for r in rows), key=lambda r: (-float(r[by]), float(r.get("fit_seconds") or 0)))
    for i, r in enumerate(out, 1):
        r["rank"] = i
    return out


def _cell(v: Any) -> Any:
    return f"{v['class']} {v['recall']:.4f}" if isinstance(v, dict) else v  # the worst class: "truck 0.1160"


def to_frame(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame([{c: _cell(r.get(c)) for c in ("rank", *COLUMNS)} for r in rows])


def write_csv(rows: list[dict[str, Any]], path: Any) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=("rank", *COLUMNS), extrasaction="ignore")
    w.writeheader()
    w.writerows(csv_safe_rows({k: _cell(v) for k, v in r.items()} for r in rows))
    atomic_write_text(path, buf.getvalue())


def text(rows: list[dict[str, Any]]) -> list[str]:
    """The leaderboard as aligned text lines (the CLI prints them)."""
    def f(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, (int, float)) else "-"

    head = (f"{'rank':>4}  {'model':<16} {'val acc':>8} {'val bal':>8} {'test acc':>9} {'test bal':>9} "
            f"{'fit s':>7} {'epochs':>6}  {'tta':<14} worst test class")
    lines = [head, "-" * len(head)]
    for r in rows:
        worst = r.get("test_worst_class")
        lines.append(f"{r['rank']:>4}  {r['model']:<16} {r['val_accuracy']:>8.4f} {f(r.get('val_balanced_accuracy')):>8} "
                     f"{f(r.get('test_accuracy')):>9} {f(r.get('test_balanced_accuracy')):>9} "
                     f"{float(r.get('fit_seconds') or 0):>7.1f} {str(r.get('epochs') or '-'):>6}  "
                     f"{r.get('tta') or '-':<14} {_cell(worst) if worst else '-'}")
    return lines
