"""Running the chosen candidates, each bounded by its share of the fit's deadline.

Each candidate trains through :func:`cnnlab.training.orchestrate.train` on the same loaded
train / validation / test arrays, into ``FIT_DIR/models/<kind>``:

- every candidate gets its share's end as a ``deadline``, less the seconds its scoring will take
  (a training.callbacks.Deadline on the fit's clock), which the trainer core's one stop rule
  (training.callbacks.TimeBudget) enforces: training stops after the epoch after which the next
  one, as long as the last, would not end in time (the run then finishes normally:
  saved and scored);
- the fast net also gets ``recipe_options.time_limit_minutes`` = its share, which sizes its net,
  epochs and TTA views (fast_plan.py); it re-plans its schedule's length to end by the same
  deadline rather than stopping at an epoch boundary (recipes/fast.py says why).

Its evaluator scores the fresh model on the validation and the test split once, at the
candidate's own precision and TTA, and keeps the probabilities for the ensemble.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.config import ExperimentConfig
from cnnlab.data.dataset import DatasetBundle, ImageArrays
from cnnlab.evaluation.metrics import SUMMARY_KEYS
from cnnlab.training.callbacks import Deadline

Clock = Callable[[], float]


@dataclass
class CandidateResult:
    kind: str
    run_dir: Path
    seconds: float
    epochs: int
    stop_reason: str | None
    val_probs: np.ndarray
    test_probs: np.ndarray | None
    val_accuracy: float
    test_accuracy: float | None
    parameters: int | None = None
    tta: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)


def scorer(holder: dict[str, Any]) -> Any:
    """The trainer's evaluator for auto-fit: the temperature fitted on validation, then validation and
    test probabilities, once each, through the one inference path (what ``ImagePredictor.load`` of
    the fit folder gives for the same images)."""

    def evaluate(result: Any, prep: Any, cfg: ExperimentConfig, rd: Any, *, progress: bool,
                 log: Callable[[str], None]) -> dict[str, Any]:
        from cnnlab.inference.after_training import fresh_inference

        pred, val_raw, calibration = fresh_inference(result, prep, cfg, rd, log=log)
        out: dict[str, Any] = {"calibration": calibration} if calibration else {}
        for name, split in (("val", prep.val), ("test", prep.test)):
            if split is None:
                continue
            # the whole model, eager: what ImagePredictor.load(fit).evaluate gives for the same images
            # (validation's logits come from the calibration's pass when it made one: not inferred twice)
            ev = pred.evaluate_details(split, where=name, split_name=name, progress=False, log=log,
                                       raw_logits=val_raw if name == "val" else None,
                                       raw_seconds=calibration.get("seconds"))
            holder[name] = ev.probabilities
            holder[f"{name}_seconds"] = ev.seconds
            out[name] = {k: ev.report[k] for k in SUMMARY_KEYS}
            if calibration and name == "test":  # the expected calibration error before and after the temperature
                from cnnlab.evaluation.calibration import ece, uncalibrated

                calibration["test_ece_before"] = ece(uncalibrated(ev.probabilities, calibration["temperature"]), split.y)
                calibration["test_ece_after"] = float(ev.report["ece"])
            log(f"{cfg.name}: {name} accuracy {ev.report['accuracy']:.4f} ({len(split):,} images, "
                f"{ev.seconds:.1f}s, TTA {pred.tta})")
        holder["tta"] = pred.tta
        holder["parameters"] = int(sum(p.numel() for p in result.model.parameters()))
        return out

    return evaluate


def run_candidate(kind: str, cfg: ExperimentConfig, train: ImageArrays, val: ImageArrays, test: ImageArrays | None,
                  run_dir: Path, *, end: float, eval_seconds: float, clock: Clock = time.monotonic,
                  log: Callable[[str], None] = print, resume: bool = False,
                  on_epoch: Callable[[], None] | None = None, measured: list[dict[str, Any]] | None = None
                  ) -> CandidateResult | None:
    """Train candidate ``kind`` (config ``cfg``) so that it ends by ``end`` (a ``clock()`` value).

    ``resume``: a killed fit had started it in ``run_dir``: it continues from its last finished
    epoch (training.orchestrate.resume), or starts again when it finished none; a run that
    finished but was not scored is scored. Under torchrun every rank trains it (DDP) and rank 0
    alone scores it: the other ranks get None. ``on_epoch()`` runs after each epoch (the fit's
    state.json records the time spent). ``measured``: the fast net's step speeds the planner
    measured (autofit/speed.py), handed to its run (fast_plan.MEASURED) so it does not time them again."""
    from cnnlab.training import orchestrate
    from cnnlab.training.rundir import RunDir
    from cnnlab.training.state import META
    from cnnlab.utils.distributed import current

    t0 = clock()
    holder: dict[str, Any] = {}
    # the share's end, less the scoring's seconds: the trainer's TimeBudget stops by it (both recipes)
    deadline = Deadline(end, reserve=eval_seconds, clock=clock)

    def callback(epoch: int, logs: dict[str, Any]) -> None:
        if on_epoch is not None:
            on_epoch()
    bundle = DatasetBundle(kind, train, test, val, {"source": "auto-fit"})
    rd = RunDir(run_dir)
    if resume and rd.is_finished():
        log(f"{kind}: trained before the fit was stopped; scoring it")
        return rescore(CandidateResult(kind, Path(run_dir), 0.0, int(rd.read_metrics().get("epochs_run") or 0),
                                       rd.read_metrics().get("stop_reason"), np.zeros(0), None, 0.0, None),
                       val, test, clock)
    if resume and (rd.state / META).is_file():
        log(f"{kind}: continuing from its last finished epoch")
        run = orchestrate.resume(run_dir, data=bundle, progress=False, log=log, epoch_callback=callback,
                                 evaluator=scorer(holder), deadline=deadline)
    else:
        if resume and Path(run_dir).exists():
            import shutil

            log(f"{kind}: stopped before its first epoch ended; starting it again")
            shutil.rmtree(run_dir)
        if measured:
            from cnnlab.training.recipes.fast_plan import MEASURED
            from cnnlab.utils.io import atomic_write_json

            atomic_write_json(Path(run_dir) / MEASURED, measured)
        run = orchestrate.train(cfg, data=bundle, run_dir=run_dir, progress=False, log=log, epoch_callback=callback,
                                evaluator=scorer(holder), deadline=deadline)
    if not current().is_main:
        return None
    y_val = val.y
    val_acc = float((holder["val"].argmax(1) == y_val).mean())
    test_acc = float((holder["test"].argmax(1) == test.y).mean()) if test is not None and "test" in holder else None
    m = run.metrics
    return CandidateResult(kind, Path(run.run_dir), clock() - t0, int(m.get("epochs_run") or 0), m.get("stop_reason"),
                           holder["val"], holder.get("test"), val_acc, test_acc, holder.get("parameters"),
                           holder.get("tta", "none"), {"val_eval_seconds": holder.get("val_seconds"),
                                                       "actual_images_per_second": actual_speed(m, len(train) + len(val))})


def actual_speed(metrics: dict[str, Any], n_images: int) -> float | None:
    """The speed a run reached, as the planner predicts it: training images/s, or for a frozen base
    the images/s of its feature extraction (None when the features came from the cache)."""
    if "feature_cache" in metrics:
        seconds = metrics.get("feature_seconds")
        return round(n_images / seconds, 1) if metrics["feature_cache"] == "miss" and seconds else None
    ips = metrics.get("train_images_per_second")
    return round(float(ips), 1) if ips else None


def rescore(res: CandidateResult, val: ImageArrays, test: ImageArrays | None,
            clock: Clock = time.monotonic) -> CandidateResult:
    """The result with the validation / test probabilities of the weights saved in its run directory
    (after a soup replaced them, or for a run trained before a kill), through the one inference path."""
    from cnnlab.inference import InferenceModel

    t0 = clock()
    pred = InferenceModel.load(res.run_dir)
    res.val_probs = pred.proba(val.x)
    res.val_accuracy = float((res.val_probs.argmax(1) == val.y).mean())
    res.extra["val_eval_seconds"] = clock() - t0
    if test is not None:
        res.test_probs = pred.proba(test.x)
        res.test_accuracy = float((res.test_probs.argmax(1) == test.y).mean())
    res.tta, res.parameters = pred.tta, int(sum(p.numel() for p in pred.model.parameters()))
    return res
