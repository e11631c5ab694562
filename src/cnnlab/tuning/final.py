"""The end of a study: retrain the best setting and measure it on the test set.

``train+val``: retrain on the training and validation images together, for as many epochs as
the best trial needed to reach its best validation score (there is nothing left to watch).
``train``: retrain exactly as the trials trained (same split, early stopping, checkpoint).
``none``: keep the best trial's own model and only evaluate it.
The result is a normal run directory (``<study>/final``) that ``cnnlab evaluate`` understands.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from cnnlab.config import apply_overrides, config_from_dict
from cnnlab.errors import CnnlabError
from cnnlab.tuning import storage as st
from cnnlab.tuning.budget import EpochGuard
from cnnlab.utils.io import atomic_write_json

MARKER = "tune_final.json"
OWNER = ".cnnlab-tune-final"  # written when the final fit's folder is made: cnnlab may replace it


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if not st.is_surplus_marked(t) and t.value is not None]
    if not done:
        return None
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(done, key=lambda t: (-t.value if maximize else t.value, t.number))[0]


def final_config(base: dict[str, Any], trial: FrozenTrial, mode: str) -> dict[str, Any]:
    """The config the final fit trains: the base config with the best trial's parameters."""
    data = apply_overrides(base, dict(trial.params))
    data["name"] = f"{base.get('name', 'experiment')}-final"
    if mode != "train+val":
        return data
    tr = data["train"]
    tr["epochs"] = int(trial.user_attrs.get("best_epoch") or trial.user_attrs.get("epochs_run") or tr["epochs"])
    for key in ("early_stopping", "checkpoint"):
        if tr.get(key) and str(tr[key].get("monitor", "")).startswith("val_"):
            tr[key] = None  # nothing to watch without a validation split
    tr["target_accuracy"] = None
    split = float(data["data"].get("validation_split") or 0.0)
    if data["data"].get("max_train_samples") and split:
        data["data"]["max_train_samples"] = int(round(data["data"]["max_train_samples"] / (1.0 - split)))
    data["data"]["validation_split"] = 0.0
    return data


def _merge_val(bundle: Any) -> Any:
    """A bundle with its own validation split, folded into the training split."""
    from cnnlab.data.dataset import DatasetBundle, join_splits

    # A joined view of the two splits' pixels (no copy): the final fit reads them a batch at a time.
    train = join_splits([bundle.train, bundle.val])
    return DatasetBundle(bundle.name, train, test=bundle.test, info=dict(bundle.info))


def _test_metrics(run_dir: Path, bundle: Any) -> dict[str, Any] | None:
    """A saved run on the bundle's test split through the one inference path (None: no test split)."""
    from cnnlab.inference import InferenceModel
    from cnnlab.inference.after_training import summary

    if bundle.test is None:
        return None
    return summary(InferenceModel.load(run_dir).evaluate_details(bundle.test, where="test", split_name="test").report)


def final_fit(study: optuna.Study, base: dict[str, Any], mode: str, out_dir: str | Path, data: Any = None,
              log: Callable[[str], None] = print, *, deadline: float | None = None,
              clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """Run (or reuse) the final fit; returns what the summary records about it.

    ``deadline`` (on ``clock``'s scale, the study's time limit): training stops after the epoch
    after which the next would end later; none starts when no time is left."""
    from cnnlab.inference.after_training import evaluate_after_training
    from cnnlab.training import orchestrate

    best = best_trial(study)
    if best is None:
        return {"mode": mode, "status": "skipped", "reason": "no trial completed"}
    final_dir = Path(out_dir) / "final"
    marker = final_dir / MARKER
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("mode") == mode and done.get("trial") == best.number:
            return dict(done, status="done (earlier run)")
    if mode == "none":
        run_dir = Path(best.user_attrs.get("run_dir", ""))
        if not (run_dir / "model.safetensors").is_file():
            return {"mode": mode, "status": "skipped", "trial": best.number,
                    "reason": f"the best trial's model is not on this machine ({run_dir})"}
        cfg = config_from_dict(base)
        bundle = data if data is not None and not isinstance(data, (str, Path)) else orchestrate.load_data(
            str(data) if data is not None else cfg.data.source, cfg)
        test = _test_metrics(run_dir, bundle)
        info = {"mode": mode, "status": "done", "trial": best.number, "run_dir": str(run_dir), "test": test}
        log(f"best trial {best.number}'s own model" + (f": test accuracy {test['accuracy']:.4f}" if test else
                                                       " (the source has no test split)"))
        return info
    if deadline is not None and clock() >= deadline:
        log("final fit skipped: the time limit is reached")
        return {"mode": mode, "status": "skipped", "trial": best.number, "reason": "time limit reached"}
    cfg_dict = final_config(base, best, mode)
    if mode == "train+val" and data is not None and getattr(data, "val", None) is not None:
        data = _merge_val(data)
    if final_dir.exists():
        # Only a folder cnnlab made (its OWNER mark, or the finished fit's marker) is ever deleted.
        if not ((final_dir / OWNER).is_file() or marker.is_file()):
            why = (f"{final_dir} exists and was not made by cnnlab tune; move it away or choose another --out "
                   "(cnnlab deletes only its own final fit)")
            log(f"final fit skipped: {why}")
            return {"mode": mode, "status": "skipped", "trial": best.number, "reason": why}
        shutil.rmtree(final_dir)  # an unfinished or outdated final fit
    final_dir.mkdir(parents=True)
    (final_dir / OWNER).write_text("made by cnnlab tune: deleted and rewritten by the next final fit\n")
    log(f"final fit ({mode}) of trial {best.number}'s setting for {cfg_dict['train']['epochs']} epochs")
    try:
        guard = EpochGuard(deadline, clock, "final fit") if deadline is not None else None
        result = orchestrate.train(cfg_dict, data=data, run_dir=final_dir, progress=False, log=log,
                                   epoch_callback=guard, evaluator=evaluate_after_training)
    except CnnlabError as exc:  # e.g. a NaN loss: the search's results stand, the summary says why
        log(f"final fit failed: {exc}")
        return {"mode": mode, "status": "failed", "trial": best.number, "reason": str(exc)}
    test = result.metrics.get("test")
    info = {"mode": mode, "status": "done", "trial": best.number, "params": dict(best.params),
            "epochs": result.metrics.get("epochs_run"), "train_samples": result.metrics.get("train_samples"),
            "train_seconds": result.metrics.get("train_seconds"), "run_dir": str(final_dir), "test": test}
    if guard is not None and guard.stopped:
        info["stopped_by_time_limit"] = True
    atomic_write_json(marker, info)
    return info
