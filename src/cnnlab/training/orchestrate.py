"""Training orchestration: config + data source -> a finished run directory.

:func:`train` and :func:`resume` are what ``cnnlab train`` and :func:`cnnlab.train` run: resolve
the config (never touching the caller's object), load and split the data, build the model, fit
it (the standard recipe in one or two stages, or the fast recipe), evaluate it (through an
``evaluator`` supplied from above, :func:`cnnlab.predictor.evaluate_after_training`, so that
evaluation is written once, in the predictor), write metrics.json and finally the model.

Threads: a run sets the compute threads it wants (the trainers do), and the caller's thread
count is restored when it returns.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from cnnlab.config import ExperimentConfig, load_config
from cnnlab.data.dataset import DatasetBundle, ImageArrays
from cnnlab.data.sources import load_source
from cnnlab.data.split import limit_samples, split_train_val
from cnnlab.errors import ConfigError, DataError
from cnnlab.models.classifier import ImageClassifier
from cnnlab.models.registry import create_model
from cnnlab.training import distributed as ddp
from cnnlab.training.callbacks import Deadline
from cnnlab.training.recipes.standard import EpochCallback, FitResult, finish, fit
from cnnlab.training.rundir import RunDir, check_run_dir
from cnnlab.utils.hardware import default_device, machine_summary, resolve_precision

ConfigLike = ExperimentConfig | str | Path | dict[str, Any] | None

#: ``data.source`` recorded for a run trained on a pandas DataFrame (pass the frame again as ``data``).
DATAFRAME_SOURCE = "<DataFrame>"


@dataclass
class Prepared:
    bundle: DatasetBundle
    train: ImageArrays
    val: ImageArrays | None
    test: ImageArrays | None


@dataclass
class RunResult:
    run_dir: Path
    config: ExperimentConfig
    metrics: dict[str, Any]
    fit: FitResult | None = field(default=None, repr=False)

    @property
    def model(self) -> ImageClassifier:
        from cnnlab.models.io import load_model

        return self.fit.model if self.fit else load_model(self.run_dir)


class Evaluator(Protocol):
    """Scores a freshly trained model; returns the entries to add to metrics.json."""

    def __call__(self, result: FitResult, prep: Prepared, cfg: ExperimentConfig, rd: RunDir, *,
                 progress: bool, log: Callable[[str], None]) -> dict[str, Any]: ...


def resolve_config(config: ConfigLike, overrides: dict[str, Any] | list[str] | None = None) -> ExperimentConfig:
    """A config object from a file, a dict or an object (a copy: the caller's object is never changed)."""
    from cnnlab.config import apply_overrides, config_from_dict, parse_override

    if isinstance(config, ExperimentConfig):
        if not overrides:
            return copy.deepcopy(config)
        config = config.to_dict()
    if isinstance(config, dict):
        data = copy.deepcopy(config)
        if isinstance(overrides, list):
            overrides = dict(parse_override(o) for o in overrides)
        return config_from_dict(apply_overrides(data, overrides or {}))
    return load_config(config, overrides)


def load_data(source: Any, cfg: ExperimentConfig | None = None, **kwargs: Any) -> DatasetBundle:
    """Load a data source (see :func:`cnnlab.data.sources.load_source`) with a config's settings."""
    if isinstance(source, DatasetBundle):
        return source
    if isinstance(source, str) and source == DATAFRAME_SOURCE:
        raise DataError("this run was trained on a pandas DataFrame: pass that DataFrame (or another "
                        "source) as data (CLI: --data)")
    if cfg is not None:
        kwargs.setdefault("image_size", cfg.data.image_size)
        kwargs.setdefault("skip_bad", cfg.data.skip_bad)
        kwargs.setdefault("image_column", cfg.data.image_column)
        kwargs.setdefault("label_column", cfg.data.label_column)
    return load_source(source, **kwargs)


def prepare_data(cfg: ExperimentConfig, data: Any = None) -> Prepared:
    """Load the source and cut it into train / validation / test as the config says."""
    bundle = load_data(data if data is not None else cfg.data.source, cfg)
    train, val = bundle.train, bundle.val
    if val is None:
        train, val = split_train_val(train, cfg.data.validation_split, cfg.data.split_method, cfg.seed)
    train = limit_samples(train, cfg.data.max_train_samples, cfg.seed)
    return Prepared(bundle, train, val, bundle.test)


def train(
    config: ConfigLike = None,
    *,
    data: Any = None,
    run_dir: str | Path | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    progress: bool = True,
    epoch_callback: EpochCallback | None = None,
    log: Callable[[str], None] = print,
    evaluator: Evaluator | None = None,
    deadline: float | Deadline | None = None,
) -> RunResult:
    """Train a model from a config (file, dict or object); ``evaluator`` scores it (None: not scored).

    ``deadline`` (a ``time.monotonic()`` value, or a training.callbacks.Deadline with its clock and
    the seconds kept for the evaluation after training) bounds the training by the core's one stop
    rule (training.callbacks.TimeBudget): after an epoch, training stops when the next epoch, as
    long as the last one, would not end before it (the run then finishes normally: final
    model, evaluation; ``stop_reason`` in metrics.json says so). The fast recipe re-plans its
    schedule's length to end by the same deadline instead (recipes/fast.py).

    ``data`` overrides ``config.data.source`` (a source string, a DataFrame or a loaded bundle).
    The run directory (default ``runs/<name>-<time>``) receives everything; see rundir.py.
    """
    started_at = time.monotonic()  # a time limit counts from here (data loading included)
    cfg = resolve_config(config, overrides)
    if isinstance(data, (str, Path)):
        cfg.data.source = str(data)
    elif data is not None and not isinstance(data, DatasetBundle):
        # An in-memory table has no name to record; never let config.yaml claim the default
        # source (cifar10), which `cnnlab evaluate RUN_DIR` would then fetch and score against.
        cfg.data.source = DATAFRAME_SOURCE
    if cfg.train.recipe == "fast":  # refused before anything is written
        from cnnlab.training.recipes.fast import check_config

        check_config(cfg)
    elif cfg.train.recipe_options:  # options are per recipe, and the standard one has none
        raise ConfigError(f"train.recipe_options.{sorted(cfg.train.recipe_options)[0]}: the standard recipe "
                          f"(train.recipe: standard) has no options; they belong to train.recipe: fast")
    if run_dir:
        check_run_dir(run_dir)
    # DDP: run directories are named by time, so rank 0 names it; rank 0 alone writes it.
    rd = RunDir(run_dir) if run_dir else ddp.from_main(lambda: RunDir.new(cfg.name))
    # The run directory is held for the run's lifetime: a second train / resume into it is refused.
    with _held(rd):
        if ddp.current().is_main:
            rd.write_config(cfg)
            ddp.announce_run_dir(rd.path)
        log, progress = ddp.main_log(log), progress and ddp.current().is_main
        with _caller_threads_restored():
            return _run(cfg, rd, data, resume=False, progress=progress, epoch_callback=epoch_callback, log=log,
                        evaluator=evaluator, started_at=started_at, deadline=deadline)


def resume(run_dir: str | Path, *, data: Any = None, progress: bool = True, log: Callable[[str], None] = print,
           epoch_callback: EpochCallback | None = None, evaluator: Evaluator | None = None,
           deadline: float | Deadline | None = None) -> RunResult:
    """Finish a run that was interrupted (even by SIGKILL), from its last finished epoch
    (``deadline``: as for :func:`train`)."""
    rd = RunDir(run_dir)
    # DDP: rank 0 reads the run directory; the other ranks need no copy of it.
    cfg, finished, has_state = ddp.from_main(
        lambda: (rd.read_config(), rd.is_finished(), (rd.state / "train_state.json").is_file()))
    log, progress = ddp.main_log(log), progress and ddp.current().is_main
    if finished:
        log(f"{rd.path} is already finished")
        return RunResult(rd.path, cfg, rd.read_metrics() if ddp.current().is_main else {})
    _check_same_source(rd, cfg, data)
    with _held(rd):
        if ddp.current().is_main:
            ddp.announce_run_dir(rd.path)
        with _caller_threads_restored():
            return _run(cfg, rd, data, resume=has_state, progress=progress, epoch_callback=epoch_callback, log=log,
                        evaluator=evaluator, deadline=deadline)


def _held(rd: RunDir) -> Any:
    """The run directory's lock (rank 0 holds it for a DDP job; the other ranks write nothing)."""
    from cnnlab.utils.locks import folder_lock

    return folder_lock(rd.path, "run directory") if ddp.current().is_main else contextlib.nullcontext()


def _check_same_source(rd: RunDir, cfg: ExperimentConfig, data: Any) -> None:
    """``resume(RUN, data=OTHER)``: refused when the run's own source still exists and OTHER is not it
    (continuing on other data would mix two datasets in one run); allowed for a source that moved."""
    if not isinstance(data, (str, Path)) or cfg.data.source in (None, DATAFRAME_SOURCE):
        return
    recorded, given = str(cfg.data.source), str(data)
    if recorded.lower() == "cifar10" or given.lower() == "cifar10":
        same = recorded.lower() == given.lower()
    else:
        if not Path(recorded).expanduser().exists():
            return  # the data moved: the given copy stands in for it
        same = os.path.realpath(Path(recorded).expanduser()) == os.path.realpath(Path(given).expanduser())
    if not same:
        raise ConfigError(f"--data {given}: {rd.path} was trained on {recorded}; resuming it on other data "
                          "is refused (start a new run instead)")


def _run(cfg: ExperimentConfig, rd: RunDir, data: Any, *, resume: bool, progress: bool,
         epoch_callback: EpochCallback | None, log: Callable[[str], None], evaluator: Evaluator | None,
         started_at: float | None = None, deadline: float | Deadline | None = None) -> RunResult:
    from cnnlab import figures

    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    prep = prepare_data(cfg, data)
    load_seconds = time.perf_counter() - t0
    log(f"data: {len(prep.train):,} train, {len(prep.val) if prep.val else 0:,} val, "
        f"{len(prep.test) if prep.test else 0:,} test images of {prep.train.image_size[0]}x"
        f"{prep.train.image_size[1]}, {prep.train.num_classes} classes ({load_seconds:.1f}s)")
    skipped = int(prep.bundle.info.get("skipped") or 0)  # --skip-bad: counted in the log and metrics.json
    if skipped:
        log(f"data: skipped {skipped:,} unreadable images (--skip-bad); first: "
            f"{(prep.bundle.info.get('skipped_files') or ['?'])[0]}")
    model = create_model(cfg.model, prep.train.class_names)
    if cfg.train.recipe == "fast":
        from cnnlab.training.recipes.fast import fit as fast_fit

        result = fast_fit(cfg, model, prep.train, prep.val, rd, resume=resume, progress=progress,
                          epoch_callback=epoch_callback, log=log, test=prep.test, started_at=started_at,
                          deadline=deadline)
    else:
        result = _fit_stages(cfg, model, prep, rd, resume=resume, progress=progress,
                             epoch_callback=epoch_callback, log=log, deadline=deadline)
    if not ddp.current().is_main:
        return RunResult(rd.path, cfg, {}, result)  # DDP: rank 0 evaluates and writes the results
    metrics: dict[str, Any] = {
        "name": cfg.name,
        **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.extra.items()},
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "stop_reason": result.stop_reason,
        "train_seconds": round(result.train_seconds, 2),
        "train_images_per_second": round(result.images_per_second, 1),
        "train_samples": len(prep.train),
        "skipped_images": skipped,
        "machine": machine_summary(),
    }
    if ddp.current().enabled:
        metrics["distributed"] = ddp.summary(cfg.train.batch_size)
    figures.learning_curves(result.history, rd.figures / "curves.png", title=cfg.name)
    if evaluator is not None and (prep.test is not None or prep.val is not None):
        metrics.update(evaluator(result, prep, cfg, rd, progress=progress, log=log))
    rd.write_metrics(metrics)
    finish(result, card_extra(cfg, prep, result))
    log(f"run directory: {rd.path}")
    return RunResult(rd.path, cfg, metrics, result)


@contextlib.contextmanager
def _caller_threads_restored() -> Iterator[None]:
    """The trainers set torch's thread count and seed torch's global generator (dropout and other
    in-model randomness draw from it) for themselves; the caller gets both back as they were."""
    before = torch.get_num_threads()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        torch.set_num_threads(before)


def card_extra(cfg: ExperimentConfig, prep: Prepared, result: FitResult) -> dict[str, Any]:
    """What the model card records beside the model: the decode size, the TTA the run uses, the
    inference precision setting (resolved per machine by cnnlab.inference) and the temperature.

    The TTA is the recipe's choice when it made one (``result.extra["tta"]``), else ``train.tta``.
    """
    tta = result.extra.get("tta")
    card = {"data_image_size": prep.train.image_size[0], "tta": tta if isinstance(tta, str) else cfg.train.tta,
            "inference": {"precision": cfg.train.precision},
            "train": {"epochs_run": result.epochs_run, "data": cfg.data.source, "train_samples": len(prep.train)}}
    if isinstance(result.extra.get("temperature"), float):  # fitted by the evaluator (cnnlab.inference)
        card["temperature"] = result.extra["temperature"]
    if not cfg.train.calibrate:  # turned off (train.calibrate: false, --no-calibrate): said so, T = 1
        card["temperature"], card["calibration"] = 1.0, "off"
    return card


def use_feature_cache(cfg: ExperimentConfig) -> bool:
    aug = cfg.train.augment
    frozen = cfg.model.freeze_base
    if cfg.train.cache_features == "off" or not frozen:
        return False
    if cfg.train.ema is not None:  # the average would be of a head alone: train on images instead
        if cfg.train.cache_features == "on":
            raise ConfigError("train.cache_features: 'on' does not combine with train.ema (the average needs "
                              "the whole model); set train.cache_features to 'auto' or 'off'")
        return False
    if cfg.train.cache_features == "on":
        return True
    return not (aug.crop_padding or aug.flip or aug.cutout) and not cfg.train.compile


def compile_features(cfg: ExperimentConfig) -> bool | None:
    return {"auto": None, "on": True, "off": False}[cfg.train.compile_features]


def _fit_stages(cfg: ExperimentConfig, model: ImageClassifier, prep: Prepared, rd: RunDir, *, resume: bool,
                progress: bool, epoch_callback: EpochCallback | None, log: Callable[[str], None],
                deadline: float | Deadline | None = None) -> FitResult:
    """Stage 1 (frozen base, partly or fully trainable), then the optional fine-tuning stage."""
    from cnnlab.training.features import FeatureArrays, HeadOnly, cached_features

    if cfg.model.freeze_base:
        model.set_base_trainable(False)
    elif cfg.model.unfreeze_last is not None:
        model.set_base_trainable(True, cfg.model.unfreeze_last)
    ft = cfg.train.finetune
    stage2_started = resume and ft is not None and (rd.state / "finetune" / "train_state.json").is_file()
    if stage2_started:
        result = None
    elif use_feature_cache(cfg):
        device = default_device()
        model.to(device)
        dtype = resolve_precision(cfg.train.precision, device)
        t0 = time.perf_counter()
        ftrain, hit = cached_features(model, prep.train.x, dtype=dtype, device=device,
                                      compile=compile_features(cfg), progress=progress,
                                      desc="train features", log=log)
        fval = None
        if prep.val is not None:
            fval, _ = cached_features(model, prep.val.x, dtype=dtype, device=device,
                                      compile=compile_features(cfg), progress=progress,
                                      desc="val features", log=log)
        log(f"frozen base: {'reused cached' if hit else 'extracted'} features "
            f"{ftrain.shape} in {time.perf_counter() - t0:.1f}s; training the head on them")
        result = fit(cfg, HeadOnly(model), FeatureArrays(ftrain, prep.train.y, prep.train.class_names),
                     FeatureArrays(fval, prep.val.y, prep.val.class_names) if fval is not None else None,
                     rd, resume=resume, progress=progress, epoch_callback=epoch_callback, log=log,
                     deadline=deadline, weights_model=model)
        result.extra["feature_seconds"] = time.perf_counter() - t0 - result.train_seconds
        result.extra["feature_cache"] = "hit" if hit else "miss"
        result.model = model
    else:
        result = fit(cfg, model, prep.train, prep.val, rd, resume=resume, progress=progress,
                     epoch_callback=epoch_callback, log=log, deadline=deadline)
    if ft is None:
        return result  # type: ignore[return-value]
    prior = result.history if result is not None else [h for h in rd.read_history() if not h.get("stage")]
    cfg2 = copy.deepcopy(cfg)
    cfg2.train.epochs = ft.epochs
    cfg2.train.optimizer.lr = ft.lr
    cfg2.train.optimizer.base_lr = ft.base_lr
    cfg2.train.schedule = ft.schedule
    model.set_base_trainable(True, ft.unfreeze_last)
    log(f"fine-tuning: base unfrozen ({'all blocks' if ft.unfreeze_last is None else f'last {ft.unfreeze_last} blocks'}), "
        f"lr {ft.lr:g} for {ft.epochs} epochs")
    result2 = fit(cfg2, model, prep.train, prep.val, rd, resume=stage2_started, progress=progress,
                  epoch_callback=epoch_callback, log=log, stage="finetune", prior_history=prior,
                  deadline=deadline)
    first_seconds = result.train_seconds if result is not None else sum(h.get("seconds", 0) for h in prior)
    result2.train_seconds += first_seconds
    result2.history = prior + result2.history
    result2.epochs_run = len(result2.history)
    if result is not None:
        result2.extra.update(result.extra)
    return result2
