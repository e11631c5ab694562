"""Output helpers shared by the subcommands: tables, JSON, CSV on stdout."""

from __future__ import annotations

import csv
import io
import json
import sys
from typing import Any, Sequence


def add_json_flag(p: Any, what: str = "the result") -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout (logs go to stderr)")


def log_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    sys.stdout.write("\n")


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str = "") -> None:
    """A plain aligned text table (readable in a terminal, a log or a pipe)."""
    if not rows:
        print("(nothing)")
        return
    columns = list(columns or rows[0].keys())
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    if title:
        print(title)
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(row, widths)))


def print_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    columns = list(columns or (rows[0].keys() if rows else []))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    from cnnlab.utils.io import csv_safe_rows

    w.writerows(csv_safe_rows(rows))  # no spreadsheet formulas from file or class names
    sys.stdout.write(buf.getvalue())


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def _numeric(s: str) -> bool:
    return s.replace(",", "").replace(".", "", 1).replace("-", "", 1).replace("%", "").isdigit()
