"""`cnnlab runs list`: every run directory under a folder, with its key settings and results."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from cnnlab.errors import ConfigError

COLUMNS = ["run", "state", "started", "arch", "epochs", "epochs_run", "batch", "lr", "accuracy", "train_seconds"]


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)  # type: ignore[assignment]
    return d


def run_row(run_dir: Path, root: Path) -> dict[str, Any]:
    """One run's settings (from config.yaml) and results (from metrics.json), tolerant of damage."""
    cfg = _read_yaml(run_dir / "config.yaml")
    metrics: dict[str, Any] = {}
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        pass
    finished = bool(metrics) and all((run_dir / n).is_file() for n in ("model.safetensors", "model.json"))
    split = "test" if isinstance(metrics.get("test"), dict) else "val" if isinstance(metrics.get("val"), dict) else None
    started = (run_dir / "config.yaml").stat().st_mtime
    rel = os.path.relpath(run_dir, root)
    return {
        "run": rel if rel != "." else run_dir.name,
        "path": str(run_dir),
        "name": cfg.get("name"),
        "state": "finished" if finished else "partial",
        "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
        "mtime": started,
        "arch": _get(cfg, "model.arch"),
        "epochs": _get(cfg, "train.epochs"),
        "epochs_run": metrics.get("epochs_run"),
        "batch": _get(cfg, "train.batch_size"),
        "lr": _get(cfg, "train.optimizer.lr"),
        "split": split,
        "accuracy": metrics[split].get("accuracy") if split else None,
        "train_seconds": metrics.get("train_seconds"),
    }


def list_runs(folder: str | Path = "runs", newest_first: bool = False) -> list[dict[str, Any]]:
    """Every folder holding a config.yaml under ``folder`` (at any depth), oldest first by start time."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such folder (give the folder that holds your run directories)")
    rows = []
    for cfg in root.rglob("config.yaml"):
        run_dir = cfg.parent
        if run_dir.name == "state" or any(p.name == "state" for p in run_dir.parents):
            continue
        rows.append(run_row(run_dir, root))
    rows.sort(key=lambda r: (r["mtime"], r["run"]), reverse=newest_first)
    return rows
