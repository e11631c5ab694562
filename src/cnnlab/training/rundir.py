"""The run directory: everything a training run leaves behind, at fixed names.

    config.yaml          the resolved config (every default filled in)
    history.csv          one row per epoch: loss, accuracy, val_loss, val_accuracy, lr, seconds
    model.safetensors    final weights (the best epoch's when restore_best_weights is on)
    best.safetensors     keep-best checkpoint (when train.checkpoint is set)
    checkpoints/         the k best epochs (train.checkpoint.save_top_k): epoch-NNN.safetensors, index.json
    model.json           the model card: architecture, preprocessing, class names, parameters
    metrics.json         test-set evaluation, training time and speed
    state/               what `cnnlab train --resume` needs (last finished epoch)
    figures/             curves.png, confusion_matrix.png, errors.png + errors.csv (error analysis) ...

Every file is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from cnnlab.config import ExperimentConfig, read_run_config
from cnnlab.errors import ConfigError
from cnnlab.utils.io import atomic_write_json, atomic_write_text, csv_safe_rows


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def new(cls, name: str, root: str | Path = "runs") -> "RunDir":
        """A new run directory, created here: ``ROOT/NAME-TIME`` (``-2``, ``-3`` ... when taken; the
        name is claimed by ``mkdir`` itself, so two runs started in the same second never share one)."""
        from cnnlab.utils.locks import new_folder

        stamp = time.strftime("%Y%m%d-%H%M%S")
        return cls(new_folder(Path(root) / f"{name}-{stamp}"))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def state(self) -> Path:
        return self.path / "state"

    def write_config(self, cfg: ExperimentConfig) -> None:
        atomic_write_text(self.path / "config.yaml", cfg.to_yaml())

    def read_config(self) -> ExperimentConfig:
        return read_run_config(self.path / "config.yaml")  # one-line errors naming the file

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        buf = io.StringIO()
        fields = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(csv_safe_rows(rows))
        atomic_write_text(self.path / "history.csv", buf.getvalue())

    def read_history(self) -> list[dict[str, Any]]:
        """The rows of history.csv: numeric columns as numbers (an empty cell is NaN), the others
        (``stage`` of a two-stage run: "" for the first stage, "finetune" after) as strings."""
        path = self.path / "history.csv"
        if not path.is_file():
            return []
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        numeric = {k for k in (rows[0] if rows else {}) if all(_is_number(r.get(k)) for r in rows)}
        return [{k: (_to_float(v) if k in numeric else (v or "")) for k, v in row.items()} for row in rows]

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        atomic_write_json(self.path / "metrics.json", metrics)

    def read_metrics(self) -> dict[str, Any]:
        path = self.path / "metrics.json"
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None

    def is_finished(self) -> bool:
        # model.json is written last (after model.safetensors): a run killed while saving is not finished.
        return all((self.path / n).is_file() for n in ("metrics.json", "model.safetensors", "model.json"))


def _is_number(value: str | None) -> bool:
    if value in ("", None):
        return True
    try:
        float(value)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


def _to_float(value: str | None) -> float | int:
    """A cell of a numeric column; integers (the epoch) stay integers, so a rewrite keeps "4"."""
    if value in ("", None):
        return float("nan")
    try:
        return int(value)  # type: ignore[arg-type]
    except ValueError:
        return float(value)  # type: ignore[arg-type]


def check_run_dir(run_dir: str | Path, what: str = "run_dir") -> None:
    """A run directory must be a folder or a path where one can be made (not a file, nor under
    one); a ConfigError naming ``what`` (the argument, or the CLI flag) otherwise."""
    from cnnlab.errors import ConfigError

    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path}: exists and is not a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{what} {path}: {parent} is a file, not a folder")
            break
