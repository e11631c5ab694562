"""The few-shot candidate: a handful of images a class (:data:`FEW_SHOT_MAX` or fewer, median class).

At 5-20 images a class a held-out validation split would leave a class one or two images, and
training a head by gradient descent with early stopping on that split is noise. Instead:

- embeddings: efficientnet_lite0 with its offline ImageNet weights, frozen, at 224 px (the
  ``frozen`` candidate's model; training/features.py), of the training and validation images
  together (the fit's split is undone: cross-validation uses them all);
- classifier: scikit-learn's multinomial ``LogisticRegression`` (L2, ``C`` = :data:`C`) on the
  raw pooled features. No standardisation: with 15-60 images, per-feature standard deviations
  are noise and dividing by them blew small ones up (benchmarks/fewshot_photos.py's photos, 6
  draws, scored on the training photos left out of each draw, not on test/: 0.741 / 0.917 / 0.946
  with a StandardScaler against 0.869 / 0.943 / 0.971 without, at 5 / 10 / 20 a class; C from 0.01
  to 10 changed it by at most 0.01; a nearest class mean scored 0.857 / 0.911 / 0.942);
- validation: stratified k-fold cross-validation, k = min(:data:`FOLDS`, smallest class), so that
  no fold lacks a class; leave-one-out when the smallest class has a single image. The figure is
  the pooled out-of-fold accuracy with its Wilson 95% interval (scipy), and the folds' mean and
  standard deviation;
- calibration: like every other candidate, a temperature (Guo et al. 2017;
  cnnlab.evaluation.calibration) divides the logits, stored in the model card (``temperature``)
  and applied on every inference path. There is no held-out split to fit it on, so it is fitted on
  the out-of-fold logits (each image scored by the fold's model that did not see it, as
  scikit-learn's ``cross_val_predict`` would give them); ``calibrate=False``: temperature 1.0 and
  ``calibration: off`` on the card, as ``train.calibrate: false`` gives the others. Its limit: the
  folds are only as independent as the images (benchmarks/fewshot_calibration.py: on the real-photo
  set, whose crops of one photo fall on both sides of a fold, it sharpened and the test ECE went
  0.099 -> 0.133, benchmarks/RESULTS.md);
- the saved model: the logistic regression fitted on every image becomes the linear head of an
  ordinary cnnlab model
  (model.safetensors + model.json, no pickle): the predictor, export and serving use it unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.data.dataset import ImageArrays, join_splits

FEW_SHOT_MAX = 20  #: the few-shot path runs when the median class has at most this many images
FOLDS = 5
C = 1.0  #: the logistic regression's inverse L2 strength, on standardised features
KIND = "fewshot"


def is_few_shot(train: ImageArrays, val: ImageArrays | None) -> bool:
    """True when the median class (training + validation images) has at most FEW_SHOT_MAX images."""
    y = train.y if val is None else np.concatenate([train.y, val.y])
    return float(np.median(np.bincount(y, minlength=train.num_classes))) <= FEW_SHOT_MAX


def _classifier(seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=3000, random_state=seed)


#: the logit of a class a fold's model never saw, below the row's least likely class: its
#: probability is 0 at every temperature calibration.T_MAX allows (exp(-ABSENT / T_MAX) ~ 1e-22)
ABSENT = 1000.0


def _logits(clf: Any, f: np.ndarray, k: int) -> np.ndarray:
    """Logits over all ``k`` classes: softmax of them is ``clf.predict_proba`` (head_weights), and a
    class the fold lacks gets a logit ABSENT below the row's lowest (probability 0, yet finite)."""
    if isinstance(clf, _Constant):
        known = np.zeros((len(f), 1))
    else:
        w, b = head_weights(clf, len(clf.classes_))
        known = f.astype(np.float64) @ w.T + b
    out = np.repeat(known.min(1, keepdims=True) - ABSENT, k, axis=1)
    out[:, clf.classes_] = known
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _fit(f: np.ndarray, y: np.ndarray, k: int, seed: int) -> Any:
    if len(np.unique(y)) < 2:  # a fold that holds one class only (leave-one-out, two singletons)
        return _Constant(int(y[0]))
    return _classifier(seed).fit(f, y)


class _Constant:
    def __init__(self, c: int):
        self.classes_ = np.array([c])

    def predict_proba(self, f: np.ndarray) -> np.ndarray:
        return np.ones((len(f), 1))


def cross_validate(f: np.ndarray, y: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """Out-of-fold probabilities (N, k) and the summary: folds, accuracy, its Wilson 95% CI, fold mean/std."""
    logits, summary, _ = cross_validate_logits(f, y, k, seed)
    return _softmax(logits), summary


def cross_validate_logits(f: np.ndarray, y: np.ndarray, k: int, seed: int = 0
                          ) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    """:func:`cross_validate` with out-of-fold logits (N, k) instead of probabilities, and a mask of
    the images whose class their fold's model saw (leave-one-out leaves a single image's class out)."""
    from scipy.stats import binomtest
    from sklearn.model_selection import LeaveOneOut, StratifiedKFold

    counts = np.bincount(y, minlength=k)
    smallest = int(counts[counts > 0].min())
    folds = min(FOLDS, smallest)
    splitter: Any = (StratifiedKFold(folds, shuffle=True, random_state=seed) if folds >= 2 else LeaveOneOut())
    method = f"stratified {folds}-fold" if folds >= 2 else "leave-one-out"
    oof = np.zeros((len(y), k))
    seen = np.zeros(len(y), bool)
    accs = []
    for tr, te in splitter.split(f, y):
        clf = _fit(f[tr], y[tr], k, seed)
        oof[te] = _logits(clf, f[te], k)
        seen[te] = np.isin(y[te], clf.classes_)
        accs.append(float((oof[te].argmax(1) == y[te]).mean()))
    right = int((oof.argmax(1) == y).sum())
    ci = binomtest(right, len(y)).proportion_ci(0.95, method="wilson")
    summary = {"method": method, "folds": len(accs), "images": int(len(y)), "accuracy": right / len(y),
               "ci95": [round(float(ci.low), 4), round(float(ci.high), 4)],
               "fold_mean": round(float(np.mean(accs)), 4), "fold_std": round(float(np.std(accs)), 4)}
    return oof, summary, seen


def describe(cv: dict[str, Any]) -> str:
    return (f"{cv['method']} cross-validation on {cv['images']} images: accuracy {cv['accuracy']:.4f} "
            f"(95% CI {cv['ci95'][0]:.3f}-{cv['ci95'][1]:.3f}; folds {cv['fold_mean']:.3f} +- {cv['fold_std']:.3f})")


def out_of_fold_temperature(logits: np.ndarray, y: np.ndarray, seen: np.ndarray, calibrate: bool = True
                            ) -> dict[str, Any]:
    """The temperature of the few-shot model, fitted on the out-of-fold logits (Guo et al. 2017).

    Cross-validation leaves no held-out split: every image is in the final model's training set,
    so its logits there are over-confident and would fit too low a temperature. The honest stand-in
    is each image's out-of-fold logits, from the fold's model that did not see it (what scikit-learn's
    ``cross_val_predict(..., method="decision_function")`` returns): models trained on (k-1)/k of the
    images, slightly less sure than the final one, which is the usual price of cross-validation.
    Images whose class their fold never saw (leave-one-out of a class of one) are left out: their
    logits say nothing about how sure the final model, which sees the class, is.
    Returns the calibration figures (temperature, ECE before / after on the out-of-fold predictions)."""
    from cnnlab.evaluation.calibration import ece, fit_temperature

    if not calibrate:
        return {"temperature": 1.0, "off": True}
    z, t = logits[seen], y[seen]
    temperature, before, after = fit_temperature(z, t)
    return {"temperature": temperature, "val_ece_before": before, "val_ece_after": after, "count": int(len(t)),
            "on": "out-of-fold logits"}


def head_weights(clf: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The fitted logistic regression as one linear layer: weights (k, D), bias (k,)."""
    w, b = clf.coef_, clf.intercept_
    if w.shape[0] == 1 and k == 2:  # binary: sigmoid(z) == softmax([-z/2, z/2])
        w, b = np.vstack([-w / 2, w / 2]), np.array([-b[0] / 2, b[0] / 2])
    return w, b


def fit_fewshot(train: ImageArrays, val: ImageArrays | None, test: ImageArrays | None, run_dir: Path, *,
                seed: int = 0, source: str = "", log: Callable[[str], None] = print,
                clock: Callable[[], float] = time.monotonic, calibrate: bool = True) -> tuple[Any, ImageArrays]:
    """Embed, cross-validate, fit the temperature on the out-of-fold logits (unless ``calibrate`` is
    False), fit on all, save into ``run_dir``. Returns (a runner.CandidateResult whose ``val_*`` are
    the out-of-fold figures, calibrated, the images they are of: training + validation)."""
    import torch

    from cnnlab.autofit.candidates import build_config
    from cnnlab.autofit.runner import CandidateResult
    from cnnlab.models.io import save_model
    from cnnlab.models.registry import create_model
    from cnnlab.training.features import extract_features
    from cnnlab.training.rundir import RunDir

    t0 = clock()
    every = train if val is None else join_splits([train, val])  # a joined view: no copy of the pixels
    k = every.num_classes
    cfg = build_config("frozen", seconds=60, epochs=1, seed=seed)
    cfg.name, cfg.data.source = KIND, source
    model = create_model(cfg.model, list(every.class_names)).eval()
    f = extract_features(model, every.x, progress=False, compile=False, log=log)
    oof_logits, cv, seen = cross_validate_logits(f, every.y, k, seed)
    log(f"{KIND}: {describe(cv)}")
    calibration = out_of_fold_temperature(oof_logits, every.y, seen, calibrate)
    t = calibration["temperature"]
    oof = _softmax(oof_logits / t)  # the validation probabilities, as the other candidates' are: calibrated
    if calibrate:
        log(f"calibration: temperature {t:.3f} on the {calibration['count']} images' out-of-fold logits "
            f"(ECE {calibration['val_ece_before']:.4f} -> {calibration['val_ece_after']:.4f})")
    else:
        log("calibration: off; temperature 1.0")
    clf = _fit(f, every.y, k, seed)
    if isinstance(clf, _Constant):  # only one class has images: nothing to learn
        from cnnlab.errors import DataError

        raise DataError("few-shot fit: the training images hold a single class")
    w, b = head_weights(clf, k)
    cls_layer = model.head.classifier
    with torch.no_grad():
        cls_layer.weight.copy_(torch.as_tensor(w, dtype=cls_layer.weight.dtype))
        cls_layer.bias.copy_(torch.as_tensor(b, dtype=cls_layer.bias.dtype))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.train.calibrate = calibrate
    rd = RunDir(run_dir)
    rd.write_config(cfg)
    card = {"data_image_size": every.image_size[0], "tta": "none", "temperature": t,
            "train": {"epochs_run": 0, "data": source, "train_samples": len(every)},
            "few_shot": {**cv, "classifier": f"LogisticRegression(C={C})"}}
    if not calibrate:
        card["calibration"] = "off"  # as orchestrate.card_extra writes it for the other candidates
    test_probs = test_acc = None
    if test is not None:
        from cnnlab.evaluation.calibration import ece

        with torch.no_grad():
            ft = extract_features(model, test.x, progress=False, compile=False, log=log)
            raw = model.head(torch.from_numpy(ft)).double().numpy()
        test_probs = _softmax(raw / t)  # the card's temperature, as InferenceModel applies it
        test_acc = float((test_probs.argmax(1) == test.y).mean())
        if calibrate:
            calibration.update(test_ece_before=ece(_softmax(raw), test.y), test_ece_after=ece(test_probs, test.y))
    save_model(model, run_dir, card)
    # the report's calibration table reads metrics.json, as it does the other candidates'
    rd.write_metrics({"epochs_run": 0, "cross_validation": cv,
                      **({"calibration": calibration} if calibrate else {})})
    params = int(sum(p.numel() for p in model.parameters()))
    res = CandidateResult(KIND, run_dir, clock() - t0, 0, None, oof, test_probs, cv["accuracy"], test_acc, params,
                          "none", {"cv": cv, "calibration": calibration})
    return res, every


def run_few_shot(predictor: Any, out: Path, train: ImageArrays, val: ImageArrays | None, test: ImageArrays | None,
                 profile: Any, preset: Any, *, limit: float, start: float, clock: Callable[[], float],
                 log: Callable[[str], None], seed: int, precision: str, device: str, machine: str, source: str,
                 finish: Callable[..., Any], calibrate: bool = True) -> Any:
    """The whole fit of a few-shot source (auto_fit's hook; ``finish``: fit.py's ``_finish``): the
    planner's candidates are not run; the plan, leaderboard, report and fit.json have the one entry."""
    from cnnlab.autofit.planner import CandidatePlan, FitPlan

    counts = np.bincount(train.y if val is None else np.concatenate([train.y, val.y]), minlength=train.num_classes)
    log(f"{KIND}: {int(np.median(counts))} images a class (median; smallest {int(counts.min())}): pretrained "
        "embeddings + logistic regression, validated by cross-validation, instead of the planner's candidates")
    why = f"median class <= {FEW_SHOT_MAX} images: cross-validated logistic regression on lite0 embeddings"
    plan = FitPlan(time_limit=limit, preset=preset.name, precision=precision, device=device, machine=machine,
                   profile=profile.to_dict(), probe_seconds=0.0, available_seconds=max(0.0, start + limit - clock()),
                   reserve_seconds=0.0, order=[KIND],
                   candidates=[CandidatePlan(KIND, 0.0, False, feasible=True, chosen=True, why=why)])
    res, every = fit_fewshot(train, val, test, out / "models" / KIND, seed=seed, source=source, log=log, clock=clock,
                             calibrate=calibrate)
    c = plan.candidates[0]
    c.status, c.actual_seconds, c.actual_epochs = "done", round(res.seconds, 1), 0
    c.actual_val_accuracy, c.actual_test_accuracy = res.val_accuracy, res.test_accuracy
    profile.count, profile.val_count = len(every), 0
    profile.validation = f"{res.extra['cv']['method']} cross-validation on all {len(every)} labelled images"
    plan.profile = profile.to_dict()
    plan.write(out / "plan.json")
    return finish(predictor, out, plan, [res], preset, profile, every, test, source, limit, start, clock, log)
