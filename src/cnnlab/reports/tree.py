"""Summary diagrams: a family of experiments drawn as a tree of boxes and arrows (matplotlib only).

The layout is the simple tidy one: leaves take consecutive columns in file order, a parent sits
centred above its children, depth is the row. The architecture box is the root. Saved as PNG and
SVG (text kept as text in the SVG, so it stays searchable and small); no graphviz binary needed.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

from cnnlab.figures import new_figure
from cnnlab.utils.io import atomic_path

COLUMN_INCHES = 2.6
ROW_INCHES = 1.55
STYLES = {
    # state: (face colour, edge colour, line style)
    "root": ("#1f3b57", "#1f3b57", "solid"),
    "finished": ("#e8f1fb", "#1f3b57", "solid"),
    "better": ("#e8f5e9", "#2e7d32", "solid"),
    "partial": ("#fff4e5", "#e8890c", "dashed"),
    "not run": ("#f2f2f2", "#9aa3ab", "dashed"),
}


@dataclass
class TreeNode:
    id: str
    parent: str | None  # None: a child of the root box
    text: str  # already wrapped lines
    state: str = "finished"  # a key of STYLES


def wrap(text: str, width: int = 30) -> str:
    return "\n".join(textwrap.wrap(text, width)) if text else ""


def layout(nodes: Sequence[TreeNode]) -> dict[str | None, tuple[float, int]]:
    """(column, depth) of every node and of the root (key None); leaves in order, parents centred."""
    children: dict[str | None, list[str]] = {None: []}
    for n in nodes:
        children.setdefault(n.id, [])
    for n in nodes:
        children.setdefault(n.parent, []).append(n.id)
    pos: dict[str | None, tuple[float, int]] = {}
    next_col = [0.0]

    def place(node: str | None, depth: int) -> float:
        kids = children.get(node, [])
        if not kids:
            col = next_col[0]
            next_col[0] += 1
        else:
            cols = [place(k, depth + 1) for k in kids]
            col = (cols[0] + cols[-1]) / 2
        pos[node] = (col, depth)
        return col

    place(None, 0)
    return pos


def draw_tree(root_text: str, nodes: Sequence[TreeNode], png: str | Path, svg: str | Path | None = None,
              title: str = "", footnote: str = "") -> list[Path]:
    """Draw the tree; returns the files written (PNG, then SVG when asked)."""
    pos = layout(nodes)
    cols = max(c for c, _ in pos.values()) + 1
    depth = max(d for _, d in pos.values()) + 1
    fig = new_figure(figsize=(max(4.0, cols * COLUMN_INCHES), max(2.0, depth * ROW_INCHES + 0.6)))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-0.5 * COLUMN_INCHES, (cols - 0.5) * COLUMN_INCHES)
    ax.set_ylim(-(depth - 0.5) * ROW_INCHES, 0.5 * ROW_INCHES)
    ax.axis("off")

    def xy(key: str | None) -> tuple[float, float]:
        c, d = pos[key]
        return c * COLUMN_INCHES, -d * ROW_INCHES

    texts = {}
    for key, text, state in [(None, root_text, "root")] + [(n.id, n.text, n.state) for n in nodes]:
        fc, ec, ls = STYLES.get(state, STYLES["finished"])
        x, y = xy(key)
        texts[key] = ax.text(x, y, text, ha="center", va="center", fontsize=8,
                             color="white" if state == "root" else "#1d232a",
                             fontweight="bold" if state == "root" else "normal",
                             bbox=dict(boxstyle="round,pad=0.5", fc=fc, ec=ec, ls=ls, lw=1.2), zorder=3)
    for n in nodes:
        parent = texts[n.parent]
        child = texts[n.id]
        # Drawn after the boxes (higher zorder), so the clipping boxes are laid out at the saving dpi.
        ax.annotate("", xy=xy(n.id), xytext=xy(n.parent), zorder=4,
                    arrowprops=dict(arrowstyle="-|>", color="#4a5560", lw=1.1, shrinkA=2, shrinkB=2,
                                    patchA=parent.get_bbox_patch(), patchB=child.get_bbox_patch(),
                                    connectionstyle="arc3,rad=0"))
    if title:
        fig.suptitle(title, fontsize=11, y=1.0, va="bottom")
    if footnote:
        fig.text(0.5, 0.0, footnote, ha="center", va="top", fontsize=7, color="#4a5560")
    written = []
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        for path in [png] + ([svg] if svg else []):
            path = Path(path)
            with atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=150, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
            written.append(path)
    return written
