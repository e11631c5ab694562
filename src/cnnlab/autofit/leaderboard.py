"""The leaderboard: one row per model (and the ensemble), best validation accuracy first."""

from __future__ import annotations

import csv
import io
from typing import Any

from cnnlab.utils.io import atomic_write_text, csv_safe_rows

COLUMNS = ("model", "kind", "val_accuracy", "test_accuracy", "fit_seconds", "epochs", "tta", "parameters", "weight")


def rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows sorted by validation accuracy (higher first; ties: the faster fit first), ranked from 1."""
    out = sorted((dict(r) for r in rows), key=lambda r: (-float(r["val_accuracy"]), float(r.get("fit_seconds") or 0)))
    for i, r in enumerate(out, 1):
        r["rank"] = i
    return out


def to_frame(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame([{c: r.get(c) for c in ("rank", *COLUMNS)} for r in rows])


def write_csv(rows: list[dict[str, Any]], path: Any) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=("rank", *COLUMNS), extrasaction="ignore")
    w.writeheader()
    w.writerows(csv_safe_rows(rows))
    atomic_write_text(path, buf.getvalue())


def text(rows: list[dict[str, Any]]) -> list[str]:
    """The leaderboard as aligned text lines (the CLI prints them)."""
    head = f"{'rank':>4}  {'model':<16} {'val acc':>8} {'test acc':>9} {'fit s':>7} {'epochs':>6}  tta"
    lines = [head, "-" * len(head)]
    for r in rows:
        test = f"{r['test_accuracy']:.4f}" if r.get("test_accuracy") is not None else "-"
        lines.append(f"{r['rank']:>4}  {r['model']:<16} {r['val_accuracy']:>8.4f} {test:>9} "
                     f"{float(r.get('fit_seconds') or 0):>7.1f} {str(r.get('epochs') or '-'):>6}  {r.get('tta') or '-'}")
    return lines
