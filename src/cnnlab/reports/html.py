"""Self-contained HTML pages: inline CSS, figures embedded as base64 PNG, no script, no network.

A page is a list of sections; each section is built from the small helpers below
(paragraphs, tables, figures, warnings). Everything a user supplies is escaped.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any, Sequence

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d232a;
       background: #f6f7f9; }
header { background: #1f3b57; color: white; padding: 18px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 22px; }
header p { margin: 2px 0; opacity: 0.9; font-size: 14px; }
nav { padding: 8px 32px; background: #e7ebf0; font-size: 14px; }
nav a { margin-right: 14px; color: #1f3b57; }
main { padding: 8px 32px 40px 32px; max-width: 1200px; }
section { background: white; border: 1px solid #dde2e8; border-radius: 6px; padding: 8px 20px 16px 20px;
          margin: 16px 0; }
h2 { font-size: 18px; border-bottom: 1px solid #e3e7ec; padding-bottom: 4px; }
h3 { font-size: 15px; margin-bottom: 6px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #d6dbe1; padding: 3px 8px; text-align: left; }
th { background: #eef1f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: 600; background: #f6f7f9; }
figure { margin: 10px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e7ec; }
figcaption { font-size: 13px; color: #4a5560; margin-top: 4px; }
pre { background: #f3f5f7; padding: 10px; font-size: 12px; overflow-x: auto; border-radius: 4px; }
.warning { background: #fff4e5; border-left: 4px solid #e8890c; padding: 8px 12px; margin: 8px 0; }
.note { background: #eef6ff; border-left: 4px solid #2f7dd1; padding: 8px 12px; margin: 8px 0; }
.kpis { display: flex; flex-wrap: wrap; gap: 12px; margin: 8px 0; }
.kpi { background: #f3f6f9; border: 1px solid #dde2e8; border-radius: 6px; padding: 6px 14px; }
.kpi b { display: block; font-size: 18px; }
.kpi span { font-size: 12px; color: #4a5560; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell's text: floats rounded, big integers with thousands separators."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if abs(value) >= 10_000:
            return f"{value:,.0f}"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
          headers: Sequence[str] | None = None, total: dict[str, Any] | None = None,
          digits: dict[str, int] | None = None) -> str:
    """An HTML table of ``rows`` (dicts); ``total`` is an emphasised last row; ``digits``: decimals per column."""
    if not rows and total is None:
        return "<p><em>(nothing)</em></p>"
    columns = list(columns or (rows[0].keys() if rows else total.keys()))  # type: ignore[union-attr]
    heads = list(headers or columns)
    digits = digits or {}
    out = ['<div class="scroll"><table>', "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in heads) + "</tr>"]
    for row, cls in [(r, "") for r in rows] + ([(total, "total")] if total else []):
        cells = []
        for c in columns:
            v = row.get(c)
            attr = ' class="num"' if _is_num(v) else ""
            cells.append(f"<td{attr}>{esc(fmt(v, digits.get(c, 4)))}</td>")
        out.append(f'<tr class="{cls}">' if cls else "<tr>")
        out.append("".join(cells) + "</tr>")
    out.append("</table></div>")
    return "\n".join(out)


def png_data_uri(path: str | Path) -> str:
    data = Path(path).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure(path: str | Path, caption: str = "", alt: str = "") -> str:
    """An embedded PNG (base64 data URI) with a caption; the page needs no file beside it."""
    src = png_data_uri(path)
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{src}" alt="{esc(alt or caption or Path(path).name)}">{cap}</figure>'


def warning(text: str) -> str:
    return f'<div class="warning">{esc(text)}</div>'


def note(text: str) -> str:
    return f'<div class="note">{esc(text)}</div>'


def para(text: str) -> str:
    return f"<p>{esc(text)}</p>"


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def kpis(items: Sequence[tuple[str, Any]]) -> str:
    """Headline numbers as tiles: (label, value) pairs."""
    tiles = "".join(f'<div class="kpi"><b>{esc(fmt(v) if not isinstance(v, str) else v)}</b>'
                    f"<span>{esc(k)}</span></div>" for k, v in items)
    return f'<div class="kpis">{tiles}</div>'


def details(summary: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{body}</details>"


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>\n{body}\n</section>'


def page(title: str, subtitle_lines: Sequence[str], sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document. ``sections``: (anchor, title, body HTML) in reading order."""
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    subtitle = "".join(f"<p>{esc(s)}</p>" for s in subtitle_lines)
    body = "\n".join(section(a, t, b) for a, t, b in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{esc(title)}</h1>{subtitle}</header>\n<nav>{nav}</nav>\n<main>\n{body}\n</main>\n"
        "</body>\n</html>\n"
    )
