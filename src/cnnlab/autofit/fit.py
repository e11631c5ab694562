"""auto_fit: data + time budget -> a fit folder and a predictor of its best entry.

The whole fit (loading, planning, training, soup, ensembling, the final evaluation and the
report) is timed from the moment it is called; ``fit.json`` records ``elapsed_seconds`` and
the overrun against ``time_limit`` (the contract: at most +5%).

Under torchrun (``cnnlab fit --nproc-per-node N``) every rank loads the data and trains each
candidate with the others; rank 0 alone measures, plans (broadcast) and writes the fit folder,
and its clock is the fit's (ranks.py).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.autofit import history
from cnnlab.autofit import leaderboard as lb
from cnnlab.autofit.budget import budget_use, fill as _fill
from cnnlab.autofit import ranks
from cnnlab.autofit import selection
from cnnlab.autofit.candidates import base_kind, build_config, check_backbone, ema_decay
from cnnlab.autofit.planner import (END_RESERVE, END_RESERVE_MIN_S, EPOCHS, FASTNET_OVERHEAD, INFER_FACTOR, PROBE_SHARE,
                                    FitPlan, make_plan)
from cnnlab.autofit.presets import get_preset
from cnnlab.autofit.profile import load_bundle, profile_data, with_validation
from cnnlab.data.dataset import DatasetBundle
from cnnlab.errors import ConfigError
from cnnlab.training import distributed as ddp

MIN_SHARE_S = 2.0  #: a candidate left with less than this is skipped
ENSEMBLE_MIN_S = 1.0  #: the ensemble is built only when at least this much time is left


def time_limit_seconds(value: Any) -> float:
    """Seconds from a number or a duration string ("90s", "10m", "1h30m"): the one duration parser."""
    from cnnlab.utils.durations import parse_duration

    if value is None:
        raise ConfigError("time_limit: expected seconds or a duration like '10m', got None")
    return parse_duration(value, "time_limit")


def _source_name(data: Any) -> str:
    from cnnlab.training.orchestrate import DATAFRAME_SOURCE

    if isinstance(data, (str, Path)):
        return str(data)
    if isinstance(data, DatasetBundle):
        return data.name
    return DATAFRAME_SOURCE


def _label_column(data: Any, label: str) -> str | None:
    """``label`` when the DataFrame or CSV has that column (else the loader detects one)."""
    if hasattr(data, "columns"):
        return label if label in list(data.columns) else None
    if isinstance(data, (str, Path)) and str(data).lower().endswith(".csv") and Path(data).is_file():
        with open(data, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
        return label if label in header else None
    return None


def _out_dir(path: Path | None) -> Path:
    from cnnlab.utils.locks import LOCK_NAME, new_folder

    if path is None:  # a new name, claimed by mkdir itself (two fits in one second get two folders)
        return new_folder(Path("runs") / f"fit-{datetime.now():%Y%m%d-%H%M%S}")
    out = path
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: not a folder")
    if out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise ConfigError(f"{out}: not empty; a fit writes into a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def auto_fit(predictor: Any, train_data: Any, tuning_data: Any = None, *, time_limit: Any, presets: str | None = None,
             seed: int = 0, log: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic,
             started_at: float | None = None, drop_leaks: bool | None = None, resume: bool = False,
             backbone: str | None = None, backbone_weights: str | None = None, calibrate: bool | None = None) -> Any:
    """Fit the best model (or ensemble) the budget allows into ``predictor.path``; returns ``predictor``.

    ``started_at``: the ``clock()`` value the time limit counts from (default: now; under
    torchrun, rank 0's). The fit folder is locked for the fit's lifetime (utils/locks.py). The splits
    are searched for duplicates first (one warning line); ``drop_leaks``: training images that
    duplicate a validation or test image are removed. ``resume``: continue the killed fit in
    ``predictor.path`` (state.py); ``train_data``, ``time_limit`` and ``presets`` may then be None
    (the fit's own are used). ``backbone`` / ``backbone_weights``: the timm backbone of the pretrained
    candidates (default efficientnet_lite0) and its weights: ``offline``, ``hub`` or a local file
    (default: offline where a package ships them, else hub). ``calibrate=False``: no temperature is
    fitted after each model's training (``train.calibrate: false``; the cards record temperature 1.0).
    ``drop_leaks`` / ``calibrate`` None: not given (False / True for a new fit; a resumed fit keeps
    its own, and refuses a value given that differs from it)."""
    import contextlib

    from cnnlab.autofit.state import FitState
    from cnnlab.utils.locks import folder_lock

    def locked(folder: Any) -> Any:
        return folder_lock(folder, "fit folder") if ddp.current().is_main else contextlib.nullcontext()

    start = clock() if started_at is None else started_at
    log = ddp.main_log(log)  # DDP: rank 0 logs, and alone writes the fit folder
    if resume:
        if predictor.path is None:
            raise ConfigError("resume: give the fit folder to continue (ImagePredictor(path=...) or --resume FOLDER)")
        with locked(predictor.path):
            return _resume(predictor, train_data, tuning_data, time_limit, presets, log, clock, start,
                           given={"drop_leaks": drop_leaks, "calibrate": calibrate})
    drop_leaks, calibrate = bool(drop_leaks), calibrate is not False  # not given: the defaults
    limit = time_limit_seconds(time_limit)
    preset = get_preset(presets, limit)
    check_backbone(backbone, backbone_weights)
    out = ddp.from_main(lambda: _out_dir(predictor.path))
    start = ranks.synced_start(start, clock)  # DDP: every rank counts the limit from rank 0's start
    tuning_source = _source_name(tuning_data) if tuning_data is not None else None
    args = {"time_limit": limit, "preset": preset.name, "seed": seed, "data_source": _source_name(train_data),
            "tuning_source": tuning_source, "label": predictor.label, "image_column": predictor.image_column,
            "backbone": backbone, "backbone_weights": backbone_weights, "drop_leaks": drop_leaks,
            "calibrate": calibrate}
    state = FitState(out, args, clock, start) if ddp.current().is_main else None
    pretrained = {"arch": backbone, "weights": backbone_weights}
    with locked(out):
        return _fit(predictor, train_data, tuning_data, limit, preset, seed, out, state, log, clock, start,
                    pretrained=pretrained, drop_leaks=drop_leaks, calibrate=calibrate)


def _resume(predictor: Any, train_data: Any, tuning_data: Any, time_limit: Any, presets: str | None,
            log: Callable[[str], None], clock: Callable[[], float], start: float,
            given: dict[str, bool | None] | None = None) -> Any:
    """Continue the fit a kill stopped in ``predictor.path`` (see state.py)."""
    from cnnlab.autofit.folder import is_fit_folder, load_fit
    from cnnlab.autofit.planner import FitPlan
    from cnnlab.autofit.state import FitState, read_state

    if ranks.world_size() > 1:
        raise ConfigError("resume: a data-parallel fit is resumed in one process (without --nproc-per-node)")
    out = Path(predictor.path)
    saved = read_state(out)
    if time_limit is not None and time_limit_seconds(time_limit) != saved["time_limit"]:
        raise ConfigError(f"time_limit: the fit in {out} has {saved['time_limit']:g}s; a resumed fit keeps it "
                          f"(got {time_limit!r})")
    if presets is not None and get_preset(presets).name != saved["preset"]:
        raise ConfigError(f"presets: the fit in {out} is {saved['preset']}; a resumed fit keeps it (got {presets!r})")
    kept = {"drop_leaks": bool(saved.get("drop_leaks")), "calibrate": saved.get("calibrate") is not False}
    for name, value in (given or {}).items():  # None: not given (the CLI's flags absent): the fit's own is kept
        if value is not None and bool(value) != kept[name]:
            raise ConfigError(f"{name}: the fit in {out} was started with {name}={kept[name]}; a resumed fit keeps "
                              f"it (got {name}={bool(value)})")
    if is_fit_folder(out):
        log(f"{out}: the fit had finished; nothing to resume")
        from cnnlab.autofit.folder import attach

        info, inf = load_fit(out)
        predictor.label = saved["label"]
        return attach(predictor, out, info, getattr(inf, "members", None) or [(inf, 1.0)])

    def source(given: Any, key: str) -> Any:
        recorded = saved.get(key)
        if given is not None:
            return given
        if recorded == "<DataFrame>":
            raise ConfigError(f"resume: the fit in {out} was given a DataFrame; pass the same data again")
        return recorded

    train_data, tuning_data = source(train_data, "data_source"), source(tuning_data, "tuning_source")
    if train_data is None:
        raise ConfigError(f"resume: {out / 'state.json'} names no data source; pass the data again")
    predictor.label, predictor.image_column = saved["label"], saved.get("image_column")
    spent = float(saved.get("elapsed_seconds") or 0.0)
    start = start - spent  # the limit counts the seconds spent before the kill
    plan_path = out / "plan.json"
    plan = FitPlan.from_dict(json.loads(plan_path.read_text(encoding="utf-8"))) if plan_path.is_file() else None
    log(f"resuming the fit in {out}: {spent:.0f}s of {saved['time_limit']:.0f}s spent, "
        + ("plan kept" if plan else "not planned yet"))
    args = {k: saved.get(k) for k in ("time_limit", "preset", "seed", "data_source", "tuning_source", "label",
                                      "image_column", "backbone", "backbone_weights", "drop_leaks", "calibrate")}
    state = FitState(out, args, clock, start, running=saved.get("running"))
    return _fit(predictor, train_data, tuning_data, float(saved["time_limit"]), get_preset(saved["preset"]),
                int(saved.get("seed") or 0), out, state, log, clock, start, plan=plan, resumed=saved,
                pretrained={"arch": saved.get("backbone"), "weights": saved.get("backbone_weights")},
                drop_leaks=kept["drop_leaks"], calibrate=kept["calibrate"])


def _fit(predictor: Any, train_data: Any, tuning_data: Any, limit: float, preset: Any, seed: int, out: Path,
         state: Any, log: Callable[[str], None], clock: Callable[[], float], start: float,
         plan: FitPlan | None = None, resumed: dict[str, Any] | None = None,
         pretrained: dict[str, Any] | None = None, drop_leaks: bool = False, calibrate: bool = True) -> Any:
    import contextlib

    backbone = {k: v for k, v in (pretrained or {}).items() if v is not None}  # build_config's arch / weights
    with state if state is not None else contextlib.nullcontext():
        return _fit_steps(predictor, train_data, tuning_data, limit, preset, seed, out, state, log, clock, start,
                          plan, resumed, backbone, drop_leaks, calibrate)


def _fit_steps(predictor: Any, train_data: Any, tuning_data: Any, limit: float, preset: Any, seed: int, out: Path,
               state: Any, log: Callable[[str], None], clock: Callable[[], float], start: float,
               plan: FitPlan | None, resumed: dict[str, Any] | None, backbone: dict[str, Any],
               drop_leaks: bool = False, calibrate: bool = True) -> Any:
    from cnnlab.autofit import speed
    from cnnlab.autofit.runner import rescore, run_candidate
    from cnnlab.autofit.state import load_result, save_result
    from cnnlab.utils.hardware import choose_precision, default_device, machine_summary

    source = _source_name(train_data)
    bundle, mixed = load_bundle(train_data, label_column=_label_column(train_data, predictor.label),
                                image_column=predictor.image_column, log=log)
    tuning = None
    if tuning_data is not None:
        from cnnlab.data.sources import load_source

        tuning = load_source(tuning_data, image_size=bundle.train.image_size[0],
                             label_column=_label_column(tuning_data, predictor.label),
                             image_column=predictor.image_column)
    train, val, test, where = with_validation(bundle, tuning, seed)
    from cnnlab.data.duplicates import check_splits

    train, duplicates = check_splits(train, val, test, drop_leaks=drop_leaks, log=log)
    ranks.check_same_data(train, val, test)  # DDP: the same seed held out the same split on every rank
    profile = profile_data(train, val, test, mixed_sizes=mixed, validation=where)
    profile.duplicates = duplicates.counts(removed=drop_leaks)  # fit.json's profile: pairs found, images removed
    log(profile.describe())
    metric = selection.selection_metric(profile)  # balanced accuracy on imbalanced data (selection.py)
    log(selection.describe(metric, profile))
    device = default_device()
    precision = choose_precision("auto", device)
    log(precision.note())
    if not calibrate:
        log("calibration: off (no temperature is fitted after training; the cards record temperature 1.0)")
    from cnnlab.autofit.fewshot import is_few_shot, run_few_shot

    if is_few_shot(train, val):  # 5-20 images a class: cross-validated embeddings + logistic regression
        ddp.from_main(lambda: run_few_shot(
            predictor, out, train, val, test, profile, preset, limit=limit, start=start, clock=clock, log=log,
            seed=seed, precision=precision.name, device=str(device), machine=machine_summary(), source=source,
            finish=_finish, calibrate=calibrate))
        return predictor
    sample = np.random.default_rng(seed).permutation(len(train))[:speed.FASTNET_SAMPLE]
    fast_speeds: list[dict[str, Any]] = []  # the fast net's measured steps, handed to its runs
    ladder: list[Any] = []  # speed.FastLadder, once measured

    def measure(kind: str) -> float:
        cfg = build_config(kind, seconds=60, epochs=1, seed=seed, **backbone)
        if kind == "fastnet":  # its ladder, for about the time the main model gets
            budget = limit * (1 - PROBE_SHARE) - max(END_RESERVE_MIN_S, END_RESERVE * limit)
            lad = speed.measure_fastnet(cfg, train.x[sample], train.y[sample], train.class_names,
                                        budget_seconds=max(1.0, budget), n_train=len(train),
                                        n_eval=len(val) + (len(test) if test is not None else 0))
            fast_speeds[:], ladder[:] = lad.measured, [lad]
            return lad.images_per_second
        return speed.measure(kind, cfg, train.x[sample], train.y[sample], train.class_names)

    world = ranks.world_size()
    if plan is None:
        # DDP: rank 0 measures and plans (the other ranks wait for its plan)
        plan = ddp.from_main(lambda: make_plan(
            profile, preset, time_limit=limit, elapsed=lambda: clock() - start, measure=measure,
            precision=precision.name, device=str(device), machine=machine_summary(), log=log, world_size=world,
            global_batch=ranks.global_batches(preset.kinds, len(train)) if world > 1 else None,
            excluded=ranks.unsupported(preset.kinds, len(train)),
            fast_speed=lambda seconds: ladder[0](seconds),
            corrections=history.corrections_for(profile, balanced=metric == selection.BALANCED, log=log)))
        if ddp.current().is_main:
            plan.write(out / "plan.json")
    else:
        for line in plan.describe():
            log(line)
    if state is not None:
        state.write()
    results = []
    end_models = start + limit - plan.reserve_seconds
    i = 0
    while True:
        if i == len(plan.order):  # the planned models are done: time left goes to another seed of the best
            extra = ddp.broadcast_object(ddp.from_main(lambda: _fill(plan, results, preset, end_models - clock(),
                                                                     limit, len(train), len(val), test)))
            if extra is None:
                break
            plan.candidates.append(extra)
            plan.order.append(extra.kind)
            if ddp.current().is_main:
                plan.write(out / "plan.json")
            log(f"{extra.kind}: {extra.why}")
        kind = plan.order[i]
        position, i = i, i + 1
        c = plan.candidate(kind)
        run_dir = out / "models" / kind
        kept = load_result(run_dir) if resumed is not None else None
        if kept is not None:  # finished before the kill: kept as it was
            log(f"{kind}: finished before the fit was stopped (val {kept.val_accuracy:.4f}); kept")
            results.append(kept)
            continue
        now = clock()
        seconds = ddp.broadcast_object(plan.seconds_for(position, end_models, now))  # DDP: rank 0's clock decides
        share_end = now + seconds
        # one trained before a kill is finished (saved, scored) even when its time is gone, unless
        # another model is there already: finishing it costs a model build, an evaluation and a save
        started = resumed is not None and not results and _trained_before(run_dir)
        if seconds < MIN_SHARE_S and not started:
            c.status, c.why = "skipped", f"only {max(seconds, 0):.1f}s left for it"
            log(f"{kind}: skipped, only {max(seconds, 0):.1f}s left for it")
            continue
        views = {"none": 1, "flip": 2, "flip_translate": 6}[preset.tta] if kind.startswith("finetune") else 1
        ips = c.images_per_second
        if base_kind(kind) == "frozen":
            eval_s = (len(test) if test is not None else 0) / ips
        else:
            eval_s = (len(val) + (len(test) if test is not None else 0)) * views / (INFER_FACTOR * ips)
        if base_kind(kind) == "fastnet":
            # Its own plan keeps EVAL_SHARE of its time for the test evaluation (TTA views chosen to
            # fit); the validation pass, at the same views, is ours: the same share, scaled by size.
            from cnnlab.training.recipes.fast_plan import EVAL_SHARE

            budget = seconds / (1 + EVAL_SHARE * len(val) / (len(test) if test is not None else len(val)))
            # The width is decided here, from the measured ladder, for the time it gets now; the recipe
            # trains that width (sizing its epochs, batch and TTA to the clock): the speed predicted is
            # the speed of the net that trains.
            widths = None
            if ladder:
                pick = ladder[0].plan(max(1.0, seconds) * (1 - FASTNET_OVERHEAD))
                widths, c.images_per_second = pick.widths, pick.images_per_second
            cfg = build_config(kind, seconds=max(1.0, budget), epochs=1, seed=seed, widths=widths)
        else:
            epochs = EPOCHS["frozen"][1] if base_kind(kind) == "frozen" else max(1, int(c.epochs))
            steps = epochs * max(1, len(train) // 32)  # the fine-tuned candidates' batch: candidates.py
            cfg = build_config(kind, seconds=seconds, epochs=epochs, seed=seed, tta=preset.tta,
                               soup_top_k=preset.soup_top_k,
                               ema=ema_decay(steps) if preset.ema and base_kind(kind) != "frozen" else None,
                               **backbone)
        cfg.data.source = source
        cfg.train.calibrate = calibrate  # False: no temperature after training (the card records 1.0)
        selection.apply(cfg, metric)  # class_balance auto on imbalanced data
        before = 0.0  # seconds this candidate trained before a kill
        if resumed is not None and (resumed.get("running") or {}).get("kind") == kind:
            before = max(0.0, float(resumed.get("elapsed_seconds") or 0) - resumed["running"]["elapsed_at_start"])
        if state is not None:
            state.write(running={"kind": kind, "elapsed_at_start": round(state.elapsed() - before, 2)})
        log(f"{kind}: training, {seconds:.0f}s for it; {start + limit - now:.0f}s of the fit left")
        res = run_candidate(kind, cfg, train, val, test, run_dir, end=share_end, eval_seconds=eval_s,
                            clock=clock, log=log,
                            resume=resumed is not None and run_dir.exists(),
                            on_epoch=state.write if state is not None else None,
                            measured=fast_speeds if base_kind(kind) == "fastnet" else None)
        if res is None:
            continue  # DDP: a rank other than 0 trained with rank 0, which scores and records the model
        res.seconds += before
        # the soup scores up to k averages on validation, then the souped model is scored again
        val_s = res.extra.get("val_eval_seconds") or 1.0
        if preset.soup_top_k and clock() + (preset.soup_top_k + 3) * val_s < share_end:
            from cnnlab.autofit.soup_step import soup_run

            souped = soup_run(res.run_dir, val.x, val.y, res.val_accuracy, log=log)
            if souped and souped["applied"]:
                res = rescore(res, val, test)
        res.extra.update(selection.scores(res.val_probs, val.y, train.class_names, "val"))
        if test is not None:
            res.extra.update(selection.scores(res.test_probs, test.y, train.class_names, "test"))
        save_result(res)
        c.status, c.actual_seconds, c.actual_epochs = "done", round(res.seconds, 1), res.epochs
        c.actual_val_accuracy, c.actual_test_accuracy = res.val_accuracy, res.test_accuracy
        c.actual_images_per_second = res.extra.get("actual_images_per_second")
        plan.write(out / "plan.json")
        history.record(plan, c, res.run_dir, balanced=metric == selection.BALANCED, log=log)  # the priors learn
        if state is not None:
            state.write(running=None)
        results.append(res)
        log(f"{kind}: done in {res.seconds:.0f}s, val {res.val_accuracy:.4f}"
            + (f" (balanced {res.extra['val_balanced_accuracy']:.4f})" if metric == selection.BALANCED else "")
            + (f", test {res.test_accuracy:.4f}" if res.test_accuracy is not None else "")
            + (f" (balanced {res.extra['test_balanced_accuracy']:.4f})"
               if metric == selection.BALANCED and res.extra.get("test_balanced_accuracy") is not None else "")
            + f"; {start + limit - clock():.0f}s of the fit left")

    def finish() -> None:  # rank 0 alone; an error there is raised on every rank
        if not results:
            raise ConfigError(f"time_limit {limit:.0f}s: no model could be trained in it; give more time")
        _finish(predictor, out, plan, results, preset, profile, val, test, source, limit, start, clock, log, metric)

    ddp.from_main(finish)
    return predictor


def _balanced(extra: dict[str, Any]) -> dict[str, Any]:
    """The leaderboard's balanced columns from a candidate's (or the ensemble's) scores."""
    keys = ("val_balanced_accuracy", "test_balanced_accuracy", "val_worst_class", "test_worst_class")
    return {k: extra.get(k) for k in keys}


def _trained_before(run_dir: Path) -> bool:
    """Whether a killed fit's candidate finished an epoch (or its whole run) in ``run_dir``."""
    from cnnlab.training.rundir import RunDir
    from cnnlab.training.state import META

    rd = RunDir(run_dir)
    return run_dir.is_dir() and ((rd.state / META).is_file() or rd.is_finished())


def _finish(predictor: Any, out: Path, plan: FitPlan, results: list[Any], preset: Any, profile: Any, val: Any,
            test: Any, source: str, limit: float, start: float, clock: Callable[[], float],
            log: Callable[[str], None], metric: str = selection.ACCURACY) -> Any:
    from cnnlab.autofit.ensemble import blend, caruana_weights
    from cnnlab.autofit.folder import FORMAT, attach, write_fit
    from cnnlab.autofit.report import error_analysis, write_report

    rows = [{"model": r.kind, "kind": r.kind, "val_accuracy": r.val_accuracy, "test_accuracy": r.test_accuracy,
             "fit_seconds": round(r.seconds, 1), "epochs": r.epochs, "tta": r.tta, "parameters": r.parameters,
             "weight": None, "path": f"models/{r.kind}", **_balanced(r.extra)} for r in results]

    def score(r: Any) -> float:  # the selection figure: balanced validation accuracy on imbalanced data
        return r.extra["val_balanced_accuracy"] if metric == selection.BALANCED else r.val_accuracy

    best_single = max(results, key=score)
    members = [(best_single, 1.0)]
    ens_probs = None
    if preset.ensemble and len(results) > 1 and start + limit - clock() > ENSEMBLE_MIN_S:
        ordered = sorted(results, key=lambda r: -score(r))
        w = caruana_weights([r.val_probs for r in ordered], val.y, sample_weight=selection.sample_weights(val.y, metric))
        used = [(r, float(wi)) for r, wi in zip(ordered, w) if wi > 0]
        ens_val = blend([r.val_probs for r, _ in used], [wi for _, wi in used])
        ens_acc = float((ens_val.argmax(1) == val.y).mean())
        ens_test = None
        if test is not None and all(r.test_probs is not None for r, _ in used):
            ens_probs = blend([r.test_probs for r, _ in used], [wi for _, wi in used])
            ens_test = float((ens_probs.argmax(1) == test.y).mean())
        weights = ", ".join(f"{r.kind} {wi:.2f}" for r, wi in used)
        log(f"ensemble ({weights}): val {ens_acc:.4f}" + (f", test {ens_test:.4f}" if ens_test is not None else ""))
        if len(used) > 1:
            rows.append({"model": "ensemble", "kind": "ensemble", "val_accuracy": ens_acc, "test_accuracy": ens_test,
                         "fit_seconds": round(sum(r.seconds for r, _ in used), 1), "epochs": None, "tta": None,
                         "parameters": sum(r.parameters or 0 for r, _ in used), "weight": weights, "path": None,
                         **_balanced({**selection.scores(ens_val, val.y, profile.class_names, "val"),
                                      **(selection.scores(ens_probs, test.y, profile.class_names, "test")
                                         if ens_probs is not None else {})})})
            members = used  # used when the ensemble ranks first on validation
    rows = lb.rank(rows, by="val_balanced_accuracy" if metric == selection.BALANCED else "val_accuracy")
    best = rows[0]["model"]
    if best != "ensemble":
        members = [(next(r for r in results if r.kind == best), 1.0)]
    lb.write_csv(rows, out / "leaderboard.csv")
    top = members[0][0]
    split, y, probs, images = ("test", test.y, ens_probs if best == "ensemble" else top.test_probs, test) \
        if test is not None else ("val", val.y, blend([r.val_probs for r, _ in members], [w for _, w in members]), val)
    named = images.paths if images.paths and Path(images.paths[0]).is_file() else None  # files, not archive members
    errors = error_analysis(probs, y, images.x, profile.class_names, out, split, log=log, paths=named,
                            explain=lambda i: type(predictor).load(top.run_dir).explain(images.x[i]))  # best member's
    row = rows[0]
    info: dict[str, Any] = {
        "format": FORMAT, "best": best, "members": [{"model": r.kind, "path": f"models/{r.kind}", "weight": w} for r, w in members],
        "label": predictor.label, "image_column": predictor.image_column, "class_names": profile.class_names,
        "preset": preset.name, "time_limit": limit, "data_source": source, "profile": profile.to_dict(),
        "val_accuracy": row["val_accuracy"], "test_accuracy": row["test_accuracy"], "leaderboard": rows,
        "selection_metric": f"val_{metric}", "selection": selection.describe(metric, profile),
        f"{split}_per_class_recall": selection.per_class_recall(probs, y, profile.class_names),
        "val_balanced_accuracy": row.get("val_balanced_accuracy"),
        "test_balanced_accuracy": row.get("test_balanced_accuracy"), "test_worst_class": row.get("test_worst_class"),
        "errors": {k: str(v) for k, v in errors.items() if k in ("png", "csv")} if errors else None,
    }
    cv = {r.kind: r.extra["cv"] for r in results if "cv" in r.extra}  # the few-shot candidate's (fewshot.py)
    if cv:
        info["cross_validation"] = cv
    elapsed = clock() - start
    info.update(elapsed_seconds=round(elapsed, 2), overrun=round(elapsed / limit - 1, 4))
    info["budget"] = budget_use(results, elapsed, limit)
    plan.actual = {"elapsed_seconds": info["elapsed_seconds"], "overrun": info["overrun"], "best": best,
                   "selection_metric": info["selection_metric"]}
    plan.write(out / "plan.json")
    write_report(out, plan.to_dict(), info, errors)
    from cnnlab.inference import InferenceModel

    loaded = [(InferenceModel.load(out / f"models/{r.kind}"), w) for r, w in members]
    for m, _ in loaded:
        m.model  # the weights load now, inside the time limit (predict needs them next)
    elapsed = clock() - start  # the report and the loading included
    info.update(elapsed_seconds=round(elapsed, 2), overrun=round(elapsed / limit - 1, 4))
    write_fit(out, info)
    attach(predictor, out, info, loaded)
    log(f"fit: best {best}, val {row['val_accuracy']:.4f}"
        + (f", test {row['test_accuracy']:.4f}" if row["test_accuracy"] is not None else "")
        + f"; {elapsed:.1f}s of {limit:.0f}s ({info['overrun']:+.1%}); folder {out}")
    return predictor

