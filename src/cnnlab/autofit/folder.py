"""The fit folder's saved form and the predictor that loads it (safetensors + JSON, no pickle).

    FIT_DIR/fit.json          format cnnlab-fit/1: the best entry, its members and weights, the
                              leaderboard, the data profile, the elapsed time and the overrun
    FIT_DIR/plan.json         the plan against what happened (planner.py)
    FIT_DIR/leaderboard.csv   one row per model and the ensemble
    FIT_DIR/report.md         the fit report (report.py); errors.png / errors.csv beside it
    FIT_DIR/models/<kind>/    each candidate's run directory (model.safetensors + model.json)

``ImagePredictor.load(FIT_DIR)`` loads the leaderboard's best entry: one run directory, or the
ensemble's members, whose probabilities it averages with the ensemble's weights (cnnlab.inference.Ensemble).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from cnnlab.errors import ModelError
from cnnlab.utils.io import atomic_write_text

FIT_NAME = "fit.json"
FORMAT = "cnnlab-fit/1"


def is_fit_folder(path: str | Path) -> bool:
    return (Path(path) / FIT_NAME).is_file()


def write_fit(folder: Path, info: dict[str, Any]) -> None:
    atomic_write_text(folder / FIT_NAME, json.dumps({**info, "format": FORMAT}, indent=2, default=str))


def read_fit(folder: Path) -> dict[str, Any]:
    path = Path(folder) / FIT_NAME
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable fit summary ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT or not info.get("members"):
        raise ModelError(f"{path}: not a {FORMAT} fit summary (format {info.get('format')!r})"
                         if isinstance(info, dict) else f"{path}: not a fit summary")
    return info


def attach(pred: Any, folder: Path, info: dict[str, Any], members: list[tuple[Any, float]]) -> Any:
    """Make ``pred`` (an ImagePredictor) the fit's predictor: its best entry (one model or an ensemble)."""
    from cnnlab.inference import Ensemble

    inf = members[0][0] if len(members) == 1 else Ensemble(members)
    pred.path, pred._inf = inf.path, inf
    pred._fit, pred._fit_path = {**info, "folder": str(folder)}, Path(folder)
    return pred


def load_fit(folder: str | Path, **kwargs: Any) -> tuple[dict[str, Any], Any]:
    """(fit.json, the inference of its best entry: an InferenceModel, or an Ensemble of members)."""
    from cnnlab.inference import Ensemble, InferenceModel

    folder = Path(folder)
    info = read_fit(folder)
    members = []
    for m in info["members"]:
        path = folder / m["path"]
        if not path.is_dir():
            raise ModelError(f"{folder / FIT_NAME}: member {m['model']!r} is missing ({path})")
        members.append((InferenceModel.load(path, **kwargs), float(m["weight"])))
    return info, (members[0][0] if len(members) == 1 else Ensemble(members))


def save_fit(src: Path, dest: str | Path) -> Path:
    """Copy a fit folder (its models and reports) to ``dest``."""
    out = Path(dest)
    if out.exists() and out.resolve() == Path(src).resolve():
        return out
    if out.exists() and any(out.iterdir()):
        from cnnlab.errors import ConfigError

        raise ConfigError(f"{out}: not empty; save a fit into a new or empty folder")
    shutil.copytree(src, out, dirs_exist_ok=True)
    return out
