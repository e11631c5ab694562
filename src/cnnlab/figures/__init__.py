"""matplotlib figures of data, training histories and metrics, saved as PNG (and SVG).

Each function draws one figure into a file and returns its path. They draw on
``matplotlib.figure.Figure`` objects rendered by the Agg canvas, never through pyplot: no window,
no backend switch, no global figure state, so they work on servers and in CI and leave a
notebook's inline plotting as it was.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cnnlab.utils.io import atomic_path



def plain(text: object) -> str:
    """``text`` shown as written: ``$`` escaped, so a class named ``$5_to_$10`` is not parsed as
    matplotlib mathtext (which fails on it, or typesets it as a formula)."""
    return str(text).replace("$", r"\$")

def new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure outside pyplot, with an Agg canvas to render it."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], squeeze: bool = True) -> tuple[Figure, Any]:
    """pyplot.subplots without pyplot."""
    fig = new_figure(figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def save(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    if _pyplot_managed(fig):
        import matplotlib.pyplot as plt

        plt.close(fig)  # a figure made by pyplot elsewhere (optuna's plots): release it
    return path


def _pyplot_managed(fig: Any) -> bool:
    import sys

    if "matplotlib.pyplot" not in sys.modules:
        return False
    from matplotlib._pylab_helpers import Gcf

    return any(m.canvas.figure is fig for m in Gcf.get_all_fig_managers())


#: the most classes a per-class figure draws one by one (200 classes would make a 70,000-px grid)
MAX_FIGURE_CLASSES = 30


def example_images(x: np.ndarray, y: np.ndarray, class_names: Sequence[str], path: str | Path,
                   per_class: int = 5, dpi: int = 300) -> Path:
    """The study's grid: the first ``per_class`` images of each class, class names over columns
    (the first MAX_FIGURE_CLASSES classes when there are more, said in the title)."""
    k = min(len(class_names), MAX_FIGURE_CLASSES)
    fig, axes = subplots(per_class, k, figsize=(1.2 * k, 1.25 * per_class), squeeze=False)
    if k < len(class_names):
        fig.suptitle(f"the first {k} of {len(class_names)} classes", fontsize=9)
    for c, name in enumerate(class_names[:k]):
        idx = np.flatnonzero(y == c)[:per_class]
        for r in range(per_class):
            ax = axes[r][c]
            ax.axis("off")
            if r < len(idx):
                ax.imshow(x[idx[r]], interpolation="nearest")
            if r == 0:
                ax.set_title(plain(name), fontsize=8)
    fig.tight_layout()
    return save(fig, path, dpi=dpi)


def label_scatter(y: np.ndarray, class_names: Sequence[str], path: str | Path, first: int = 5000) -> Path:
    """The study's shuffle check: label index against position for the first ``first`` labels."""
    n = min(first, len(y))
    fig, ax = subplots(figsize=(8, 3))
    ax.scatter(np.arange(n), y[:n], s=1, alpha=0.5)
    ax.set_yticks(range(len(class_names)), [plain(c) for c in class_names], fontsize=7)
    ax.set_xlabel("position in the training set")
    ax.set_title(f"labels of the first {n:,} training images (a shuffled set looks like noise)")
    return save(fig, path)


def best_epoch(history: list[dict[str, float]], monitor: str = "val_loss") -> int | None:
    vals = [(h.get(monitor), i) for i, h in enumerate(history) if h.get(monitor) is not None
            and not math.isnan(h.get(monitor, float("nan")))]
    if not vals:
        return None
    pick = max if "acc" in monitor else min
    return pick(vals)[1]


def overfitting_epoch(history: list[dict[str, float]], window: int = 3) -> int | None:
    """First epoch after which validation loss rises for ``window`` epochs while training loss falls."""
    v = [h.get("val_loss", float("nan")) for h in history]
    t = [h.get("loss", float("nan")) for h in history]
    for i in range(len(history) - window):
        if all(v[j + 1] > v[j] and t[j + 1] < t[j] for j in range(i, i + window)):
            return i
    return None


def learning_curves(history: list[dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Loss and accuracy, training vs validation, best epoch marked, overfitting flagged."""
    epochs = [int(h.get("epoch", i + 1)) for i, h in enumerate(history)]
    fig, axes = subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        ax.plot(epochs, [h.get(key) for h in history], "o-", ms=3, label=f"training {label}")
        if any("val_" + key in h for h in history):
            ax.plot(epochs, [h.get("val_" + key) for h in history], "o-", ms=3, label=f"validation {label}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    b = best_epoch(history)
    if b is not None:
        for ax in axes:
            ax.axvline(epochs[b], color="green", ls="--", lw=1, label=f"best epoch ({epochs[b]})")
    o = overfitting_epoch(history)
    if o is not None:
        axes[0].axvspan(epochs[o], epochs[-1], color="red", alpha=0.07,
                        label="overfitting: val loss rises, train loss falls")
    for ax in axes:
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)


def confusion_heatmap(cm: np.ndarray, class_names: Sequence[str], path: str | Path, normalize: bool = True) -> Path:
    cm = np.asarray(cm, dtype=float)
    shown = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalize else cm
    k = len(class_names)
    size = min(max(5.0, 0.55 * k + 2), 20.0)  # many classes: a bounded figure, no tick labels past 60
    fig, ax = subplots(figsize=(size, size * 0.85))
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    if k <= 60:
        ax.set_xticks(range(k), [plain(c) for c in class_names], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), [plain(c) for c in class_names], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if shown[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class" if normalize else "count")
    ax.set_title("confusion matrix")
    fig.tight_layout()
    return save(fig, path)


def reliability_diagram(bins: list[dict[str, float]], ece: float, path: str | Path) -> Path:
    fig, ax = subplots(figsize=(4.5, 4.5))
    centers = [(b["lo"] + b["hi"]) / 2 for b in bins]
    accs = [0 if math.isnan(b["accuracy"]) else b["accuracy"] for b in bins]
    width = bins[0]["hi"] - bins[0]["lo"] if bins else 0.1
    ax.bar(centers, accs, width=width * 0.95, edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability diagram (ECE {ece:.3f})")
    ax.legend(fontsize=8)
    return save(fig, path)


def reliability_before_after(before: list[dict[str, float]], after: list[dict[str, float]], ece_before: float,
                             ece_after: float, temperature: float, path: str | Path) -> Path:
    """Two reliability diagrams side by side: accuracy per confidence bin before and after the
    temperature (logits / T), each with its ECE; bars on the diagonal are calibrated, below it overconfident."""
    fig, axes = subplots(1, 2, figsize=(8.5, 4.2))
    for ax, bins, e, title in ((axes[0], before, ece_before, "before the temperature"),
                               (axes[1], after, ece_after, f"after (T = {temperature:.3f})")):
        centers = [(b["lo"] + b["hi"]) / 2 for b in bins]
        accs = [0 if math.isnan(b["accuracy"]) else b["accuracy"] for b in bins]
        width = bins[0]["hi"] - bins[0]["lo"] if bins else 0.1
        ax.bar(centers, accs, width=width * 0.95, edgecolor="black", alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_title(f"{title}: ECE {e:.3f}", fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
    axes[0].set_ylabel("accuracy")
    fig.tight_layout()
    return save(fig, path)


def per_class_recall(per_class: list[dict[str, Any]], path: str | Path, balanced_accuracy: float | None = None
                     ) -> Path:
    """Horizontal bars of each class's recall (lowest first), with its support, and the balanced
    accuracy (their mean) as a line: on imbalanced data the classes plain accuracy hides."""
    rows = sorted((r for r in per_class if r.get("support", 0) > 0), key=lambda r: r["recall"])
    shown_of = len(rows)
    if len(rows) > MAX_FIGURE_CLASSES:  # many classes: the lowest recalls, which are the point
        rows = rows[:MAX_FIGURE_CLASSES]
    k = max(1, len(rows))
    fig, ax = subplots(figsize=(6.0, max(2.5, 0.28 * k + 1.2)))
    names = [f"{r['class']} ({r['support']:,})" for r in rows]
    recalls = [r["recall"] for r in rows]
    ax.barh(range(len(rows)), recalls, color=["#c0392b" if v < 0.5 else "#2e86c1" for v in recalls])
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("recall (images of the class predicted as it)")
    if balanced_accuracy is not None:
        ax.axvline(balanced_accuracy, color="black", ls="--", lw=1, label=f"balanced accuracy {balanced_accuracy:.3f}")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_title("recall per class (support in brackets; red: below 0.5)" if shown_of == len(rows)
                 else f"the {len(rows)} lowest recalls of {shown_of} classes (support in brackets)")
    fig.tight_layout()
    return save(fig, path)
